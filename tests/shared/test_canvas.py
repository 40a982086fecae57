"""The canvas models: enumerations from the contract, limits, schema."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.canvas import (
    MAX_DETAILED_DESCRIPTIONS,
    MAX_LOCAL_DESCRIPTIONS,
    MAX_STRING_LENGTH,
    Canvas,
    canvas_json_schema,
)
from shared.contract import AREAS, COLORS, LOCATIONS, OFFSETS

REGION = {
    "location": "on the left", "offset": "no offset", "area": "a small square area", "distance_to_viewer": 1.0,
    "description": "A dog.", "HTML_web_color_name": "brown",
}
GLOBAL = {"description": "A scene.", "HTML_web_color_name": "white"}


def make(**changes) -> Canvas:
    region = {**REGION, **changes.pop("region", {})}
    glob = {**GLOBAL, **changes.pop("glob", {})}
    return Canvas.model_validate({"global_description": glob, "local_descriptions": [region], **changes})


def test_valid_canvas() -> None:
    canvas = make()
    assert canvas.local_descriptions[0].tags == ""
    assert Canvas.model_validate_json(canvas.model_dump_json()) == canvas


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"region": {"location": "on the moon"}}, "on the left"),
        ({"region": {"area": "huge"}}, "a small square area"),
        ({"region": {"HTML_web_color_name": "Brown"}}, "Input should be"),
        ({"region": {"distance_to_viewer": 0}}, "greater than 0"),
        ({"region": {"distance_to_viewer": float("inf")}}, "less than or equal"),
        ({"region": {"description": ""}}, "at least 1 character"),
        ({"region": {"description": " ..."}}, "must contain words"),
        ({"region": {"tags": "x" * (MAX_STRING_LENGTH + 1)}}, "at most 1000 characters"),
        ({"region": {"detailed_descriptions": ["d"] * (MAX_DETAILED_DESCRIPTIONS + 1)}}, "at most 16 items"),
        ({"region": {"colour": "red"}}, "Extra inputs are not permitted"),
        ({"local_descriptions": [REGION] * (MAX_LOCAL_DESCRIPTIONS + 1)}, "at most 20 items"),
    ],
)
def test_invalid_canvases_say_what_is_wrong(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(**changes)


def test_json_schema_is_generated_from_the_tables() -> None:
    schema = canvas_json_schema()
    local = schema["$defs"]["LocalDescription"]["properties"]
    assert local["location"]["enum"] == list(LOCATIONS)
    assert local["offset"]["enum"] == list(OFFSETS)
    assert local["area"]["enum"] == list(AREAS)
    assert local["HTML_web_color_name"]["enum"] == list(COLORS)
    assert schema["properties"]["local_descriptions"]["maxItems"] == MAX_LOCAL_DESCRIPTIONS
