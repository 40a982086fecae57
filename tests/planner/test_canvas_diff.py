"""``shared.canvas_diff``: what an edit changed, as PlanResult.changes reports it."""

from __future__ import annotations

from typing import Any

from shared.canvas import Canvas, LocalDescription
from shared.canvas_diff import diff_canvases
from shared.plans import CanvasChanges, RegionChange
from tests.planner.test_plans_real import EDITED

CAT, DOG = EDITED.local_descriptions


def region(base: LocalDescription, **changes: Any) -> LocalDescription:
    return base.model_copy(update=changes)


def with_regions(*regions: LocalDescription, canvas: Canvas = EDITED) -> Canvas:
    return canvas.model_copy(update={"local_descriptions": list(regions)})


WINDOW = region(
    DOG,
    location="on the top",
    area="a large horizontal area",
    distance_to_viewer=9.0,
    description="A tall window.",
    detailed_descriptions=["Light falls through a tall window."],
    tags="window, light",
    atmosphere="Bright.",
    style="Soft light.",
    quality_meta="Sharp.",
    HTML_web_color_name="lightblue",
)


def test_the_same_canvas_changes_nothing() -> None:
    assert diff_canvases(EDITED, EDITED) == CanvasChanges()


def test_a_region_rewritten_in_place_is_changed_with_its_fields() -> None:
    corgi = region(DOG, description="A corgi.", tags="corgi, sitting")
    changes = diff_canvases(EDITED, with_regions(CAT, corgi))
    fields = ["description", "tags"]
    assert changes.regions == [RegionChange(kind="changed", index=1, description="A corgi.", fields=fields)]
    assert changes.global_fields == []


def test_an_added_region_is_added_at_its_new_index_and_the_rest_unchanged() -> None:
    changes = diff_canvases(EDITED, with_regions(WINDOW, CAT, DOG))
    assert changes.regions == [RegionChange(kind="added", index=0, description="A tall window.")]


def test_a_removed_region_is_reported_at_its_previous_index() -> None:
    changes = diff_canvases(EDITED, with_regions(DOG))
    assert changes.regions == [RegionChange(kind="removed", index=0, description="A grey cat.")]


def test_a_replacement_unlike_the_old_region_is_removed_plus_added() -> None:
    changes = diff_canvases(EDITED, with_regions(CAT, WINDOW))
    assert changes.regions == [
        RegionChange(kind="added", index=1, description="A tall window."),
        RegionChange(kind="removed", index=1, description="A brown dog."),
    ]


def test_reordered_identical_regions_are_not_changes() -> None:
    assert diff_canvases(EDITED, with_regions(DOG, CAT)).regions == []


def test_duplicates_are_matched_once_each() -> None:
    changes = diff_canvases(with_regions(CAT, CAT), with_regions(CAT))
    assert changes.regions == [RegionChange(kind="removed", index=1, description="A grey cat.")]


def test_a_moved_region_is_changed_in_its_layout_fields() -> None:
    moved = region(CAT, location="on the right", distance_to_viewer=2.0)
    changes = diff_canvases(EDITED, with_regions(moved, DOG))
    assert changes.regions == [
        RegionChange(kind="changed", index=0, description="A grey cat.", fields=["location", "distance_to_viewer"])
    ]


def test_each_previous_region_pairs_with_its_closest_rewrite() -> None:
    # Two rewrites both look like the dog (same layout); only the closer one is "the dog changed".
    puppy = region(DOG, description="A brown puppy.")
    corgi = region(DOG, description="A corgi.", tags="corgi", atmosphere="Playful.")
    changes = diff_canvases(with_regions(DOG), with_regions(corgi, puppy))
    assert [(c.kind, c.index, c.description) for c in changes.regions] == [
        ("added", 0, "A corgi."),
        ("changed", 1, "A brown puppy."),
    ]


def test_global_field_changes_are_named() -> None:
    glob = EDITED.global_description.model_copy(update={"tags": "cat, dog", "HTML_web_color_name": "white"})
    changes = diff_canvases(EDITED, EDITED.model_copy(update={"global_description": glob}))
    assert changes.global_fields == ["tags", "HTML_web_color_name"]
    assert changes.regions == []


def test_changes_round_trip_as_json() -> None:
    changes = diff_canvases(EDITED, with_regions(WINDOW, region(DOG, description="A corgi.")))
    assert CanvasChanges.model_validate_json(changes.model_dump_json()) == changes


def test_a_known_pairing_replaces_the_matching() -> None:
    # A lamp written where the dog was, with the dog's layout: the matcher would call it the dog
    # changed; the patch that made it knows the dog was removed and a lamp added.
    lamp = region(DOG, description="A lamp.")
    assert diff_canvases(EDITED, with_regions(CAT, lamp)).regions[0].kind == "changed"
    changes = diff_canvases(EDITED, with_regions(CAT, lamp), pairs={0: 0})
    assert changes.regions == [
        RegionChange(kind="added", index=1, description="A lamp."),
        RegionChange(kind="removed", index=1, description="A brown dog."),
    ]


def test_a_region_elsewhere_with_another_subject_is_not_the_same_region() -> None:
    lamp = region(DOG, location="on the left", description="A lamp.")
    kinds = [c.kind for c in diff_canvases(with_regions(DOG), with_regions(lamp)).regions]
    assert kinds == ["added", "removed"]
