"""Pydantic models of the Omost canvas.

Field names are Omost's own (``detailed_descriptions``, ``HTML_web_color_name``, ...) so that the
code form an Omost LLM writes maps 1:1 onto this JSON. Enumerations are ``Literal`` types built
from the contract tables. The limits are generous for real Omost output (its fixtures have 4-6
regions of 5-8 details) but bound the work one request can cause in the renderer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from shared.contract import AREAS, COLORS, LOCATIONS, OFFSETS

MAX_LOCAL_DESCRIPTIONS = 20
MAX_DETAILED_DESCRIPTIONS = 16
MAX_STRING_LENGTH = 1000
MAX_DISTANCE_TO_VIEWER = 1e6

if TYPE_CHECKING:
    # A type checker cannot read a Literal built from a file at run time, so to it these are plain strings;
    # pydantic, which does read them, holds every value to its table.
    Location: TypeAlias = str
    Offset: TypeAlias = str
    Area: TypeAlias = str
    ColorName: TypeAlias = str
else:
    Location = Literal[tuple(LOCATIONS)]
    Offset = Literal[tuple(OFFSETS)]
    Area = Literal[tuple(AREAS)]
    ColorName = Literal[tuple(COLORS)]

Text = Annotated[str, StringConstraints(max_length=MAX_STRING_LENGTH)]


def _not_blank(value: str) -> str:
    if not value.strip(",. \t\r\n"):
        raise ValueError("must contain words, not only spaces or punctuation")
    return value


Description = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STRING_LENGTH), AfterValidator(_not_blank)]
DetailedDescriptions = Annotated[list[Text], Field(max_length=MAX_DETAILED_DESCRIPTIONS)]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Distance = Annotated[float, Field(gt=0, le=MAX_DISTANCE_TO_VIEWER), AfterValidator(_finite)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GlobalDescription(_Model):
    """The whole image: Omost's ``set_global_description`` call."""

    description: Description
    detailed_descriptions: DetailedDescriptions = []
    tags: Text = ""
    HTML_web_color_name: ColorName


class LocalDescription(_Model):
    """One region: Omost's ``add_local_description`` call."""

    location: Location
    offset: Offset
    area: Area
    distance_to_viewer: Distance
    description: Description
    detailed_descriptions: DetailedDescriptions = []
    tags: Text = ""
    atmosphere: Text = ""
    style: Text = ""
    quality_meta: Text = ""
    HTML_web_color_name: ColorName


class Canvas(_Model):
    """A global description and local regions, in the order the code form declares them."""

    global_description: GlobalDescription
    local_descriptions: Annotated[list[LocalDescription], Field(max_length=MAX_LOCAL_DESCRIPTIONS)] = []


GLOBAL_ARGUMENTS: tuple[str, ...] = tuple(GlobalDescription.model_fields)
LOCAL_ARGUMENTS: tuple[str, ...] = tuple(LocalDescription.model_fields)
"""Argument names in Omost's signature order (the order the system prompt declares them)."""

ENUM_TABLES: dict[str, tuple[str, ...]] = {
    "location": tuple(LOCATIONS),
    "offset": tuple(OFFSETS),
    "area": tuple(AREAS),
    "HTML_web_color_name": tuple(COLORS),
}
"""The enumerated fields and their allowed values."""


def canvas_json_schema() -> dict[str, Any]:
    """JSON Schema of the canvas, generated from the models."""
    return Canvas.model_json_schema()
