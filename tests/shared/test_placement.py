"""The inverse of ``placement_rect``: snapping any rectangle to the nearest valid Omost placement.

Also checks that the playground's JavaScript mirrors (``planner_service/static/playground/layout.js``
and ``omost.js``) agree with the Python functions: placements, snapping on all 729 placements and on
random rectangles, the colour composition, ``canvas_to_code`` and reading the code form back. Those
run the ES modules under node and skip when node is not installed.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.canvas import Canvas
from shared.contract import AREAS, COLORS, GRID, LOCATIONS, OFFSETS
from shared.layout import (
    Placement,
    all_placements,
    layout_canvas,
    placement_rect,
    rect_distance,
    snap_to_placement,
)
from shared.omost_code import canvas_to_code, parse_canvas_code

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "omost_outputs"
NODE = shutil.which("node")

coordinates = st.floats(min_value=-30, max_value=120, allow_nan=False, allow_infinity=False)
rects = st.tuples(coordinates, coordinates, coordinates, coordinates)


def test_all_placements_are_the_729_combinations_no_offset_first() -> None:
    placements = all_placements()
    assert len(placements) == len(set(placements)) == 9 * 9 * 9
    assert set(placements) == {Placement(l, o, a) for l in LOCATIONS for o in OFFSETS for a in AREAS}  # noqa: E741
    assert all(p.offset == "no offset" for p in placements[:81])


@pytest.mark.parametrize("placement", all_placements(), ids=lambda p: "/".join(p))
def test_every_placement_snaps_back_to_its_own_rect(placement: Placement) -> None:
    rect = placement_rect(*placement)
    snapped = snap_to_placement(rect)
    assert placement_rect(*snapped) == rect
    # With itself preferred, a placement is kept exactly (a region's arguments do not churn).
    assert snap_to_placement(rect, prefer=placement) == placement


def test_shared_rects_resolve_to_the_first_placement_in_table_order() -> None:
    by_rect: dict[tuple[int, int, int, int], list[Placement]] = {}
    for placement in all_placements():
        by_rect.setdefault(placement_rect(*placement), []).append(placement)
    shared = {rect: group for rect, group in by_rect.items() if len(group) > 1}
    assert shared, "clipping makes several placements share a rectangle"
    for rect, group in shared.items():
        assert snap_to_placement(rect) == group[0]
        for placement in group:
            assert snap_to_placement(rect, prefer=placement) == placement


def test_the_full_canvas_and_nudged_boxes() -> None:
    center = placement_rect("in the center", "no offset", "a small square area")
    assert center == (20, 70, 20, 70)
    nudged = (center[0] + 3.4, center[1] + 3.4, center[2] - 4.9, center[3] - 4.9)
    assert snap_to_placement(nudged) == Placement("in the center", "no offset", "a small square area")
    moved = (center[0], center[1], center[2] - 10, center[3] - 10)
    assert snap_to_placement(moved) == Placement("in the center", "slightly to the left", "a small square area")
    assert placement_rect(*snap_to_placement((0, GRID, 0, GRID))) in {(0, 90, 15, 75), (15, 75, 0, 90)}


@settings(max_examples=300, deadline=None)
@given(rects)
def test_snap_is_the_nearest_placement(rect: tuple[float, float, float, float]) -> None:
    snapped = snap_to_placement(rect)
    best = rect_distance(rect, placement_rect(*snapped))
    assert all(best <= rect_distance(rect, placement_rect(*p)) for p in all_placements())


def test_bad_rects_are_rejected() -> None:
    with pytest.raises(ValueError):
        snap_to_placement((0, 1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        snap_to_placement((0, float("nan"), 2, 3))


# ------------------------------------------------------------------------------------------------
# The JavaScript mirrors, run under node.


def _tables() -> dict:
    def table(t: dict) -> dict:
        return {k: list(v) for k, v in t.items()}

    return {"locations": table(LOCATIONS), "offsets": table(OFFSETS), "areas": table(AREAS), "colors": table(COLORS)}


def _run_node(job: dict) -> dict:
    result = subprocess.run(
        [NODE, str(ROOT / "tests" / "playground" / "node_mirror.mjs")],  # type: ignore[list-item]
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


TRICKY = ["a", "B", " ", "'", '"', "\\", "\n", "\t", "`", ",", ".", "é", "ß", "\u00a0", "\u2028", "😀", "\x7f", "x"]


def _random_text(rng: random.Random, min_size: int = 0) -> str:
    while True:
        text = "".join(rng.choice(TRICKY) for _ in range(rng.randint(min_size, 12)))
        if min_size == 0 or text.strip(",. \t\r\n"):
            return text


def _random_canvas(rng: random.Random) -> Canvas:
    colors = sorted(COLORS)
    regions = [
        {
            "location": rng.choice(list(LOCATIONS)),
            "offset": rng.choice(list(OFFSETS)),
            "area": rng.choice(list(AREAS)),
            "distance_to_viewer": rng.choice([1.0, 2.0, 5.0, 0.5, 1e-5, 3.25, 1e7 / 13, float(rng.randint(1, 9))]),
            "description": _random_text(rng, 1),
            "detailed_descriptions": [_random_text(rng) for _ in range(rng.randint(0, 3))],
            "tags": _random_text(rng),
            "atmosphere": _random_text(rng),
            "style": _random_text(rng),
            "quality_meta": _random_text(rng),
            "HTML_web_color_name": rng.choice(colors),
        }
        for _ in range(rng.randint(0, 6))
    ]
    glob = {
        "description": _random_text(rng, 1),
        "detailed_descriptions": [_random_text(rng) for _ in range(rng.randint(0, 3))],
        "tags": _random_text(rng),
        "HTML_web_color_name": rng.choice(colors),
    }
    return Canvas.model_validate({"global_description": glob, "local_descriptions": regions})


@pytest.fixture(scope="module")
def mirror() -> dict:
    if NODE is None:
        pytest.skip("node is not installed; the JavaScript mirrors are checked under node")
    rng = random.Random(9)
    placements = all_placements()
    snaps: list[tuple[list[float], list[str] | None]] = []
    for p in placements:
        snaps.append((list(placement_rect(*p)), None))
        snaps.append((list(placement_rect(*p)), list(p)))
    for _ in range(3000):
        rect = [rng.uniform(-20, 110) for _ in range(4)]
        if rng.random() < 0.5:
            rect = [round(v) for v in rect]
        snaps.append((rect, list(rng.choice(placements)) if rng.random() < 0.3 else None))
    fixtures = [parse_canvas_code(p.read_text()).canvas for p in sorted(FIXTURES.glob("*.md"))]
    canvas_list = fixtures + [_random_canvas(rng) for _ in range(150)]
    texts = [p.read_text() for p in sorted(FIXTURES.glob("*.md"))] + [canvas_to_code(c) for c in canvas_list]
    job = {
        "tables": _tables(),
        "snaps": snaps,
        "canvases": [c.model_dump(mode="json") for c in canvas_list],
        "texts": texts,
    }
    return {"job": job, "canvases": canvas_list, "out": _run_node(job)}


def test_js_placements_and_rects_match(mirror: dict) -> None:
    out = mirror["out"]
    assert [tuple(p) for p in out["placements"]] == [tuple(p) for p in all_placements()]
    assert [tuple(r) for r in out["rects"]] == [placement_rect(*p) for p in all_placements()]


def test_js_snapping_matches_python_on_all_placements_and_random_rects(mirror: dict) -> None:
    job, out = mirror["job"], mirror["out"]
    assert len(out["snaps"]) == len(job["snaps"]) >= 2 * 729
    for (rect, prefer), js in zip(job["snaps"], out["snaps"], strict=True):
        assert tuple(js) == snap_to_placement(tuple(rect), prefer=tuple(prefer) if prefer else None), (rect, prefer)


def test_js_colour_composition_matches_initial_image(mirror: dict) -> None:
    for canvas, encoded in zip(mirror["canvases"], mirror["out"]["images"], strict=True):
        rgba = np.frombuffer(base64.b64decode(encoded), dtype=np.uint8).reshape(GRID, GRID, 4)
        np.testing.assert_array_equal(rgba[..., :3], layout_canvas(canvas).initial_image())
        assert (rgba[..., 3] == 255).all()


def test_js_canvas_to_code_matches_python(mirror: dict) -> None:
    for canvas, code in zip(mirror["canvases"], mirror["out"]["codes"], strict=True):
        assert code == canvas_to_code(canvas)


def test_js_reads_the_code_form_like_python(mirror: dict) -> None:
    for text, parsed in zip(mirror["job"]["texts"], mirror["out"]["parsed"], strict=True):
        assert "canvas" in parsed, parsed.get("error")
        assert Canvas.model_validate(parsed["canvas"]) == parse_canvas_code(text).canvas
