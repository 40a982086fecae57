"""Omost's ``Canvas.process``: rectangles, layer order, masks and the colour composition.

Everything here must agree exactly with Omost's published rules (see ``omost_contract.json``):
the renderer steers attention with these masks, and the initial latent is built from the colour
composition, so an off-by-one here moves a region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from shared.canvas import Canvas, LocalDescription
from shared.contract import AREAS, COLORS, GRID, LOCATIONS, OFFSETS

Rect = tuple[int, int, int, int]
"""(top, bottom, left, right) in the 90-grid; rows top:bottom and columns left:right, end-exclusive."""


def normalise_subprompt(text: str) -> str:
    """Omost's ``safe_str``: strip ',', '.' and ' ' from both ends and end with exactly one '.'."""
    return text.strip(",. ") + "."


def placement_rect(location: str, offset: str, area: str) -> Rect:
    """The 90-grid rectangle of a placement, clipped to the canvas."""
    x, y = LOCATIONS[location]
    dx, dy = OFFSETS[offset]
    w, h = AREAS[area]
    x, y = x + dx, y + dy
    rect = (y - h // 2, y + h // 2, x - w // 2, x + w // 2)
    top, bottom, left, right = (max(0, min(GRID, v)) for v in rect)
    return top, bottom, left, right


def nearest_exact_indices(source: int, target: int) -> npt.NDArray[np.int64]:
    """Source indices that ``torch.nn.functional.interpolate(mode="nearest-exact")`` samples.

    Mirrors torch's CPU kernel arithmetic (a float32 scale, the product rounded to float32 before
    the floor) so that masks made here and in the renderer agree pixel for pixel at every size.
    """
    scale = np.float32(source) / np.float32(target)
    products = ((np.arange(target, dtype=np.float64) + 0.5) * np.float64(scale)).astype(np.float32)
    indices: npt.NDArray[np.int64] = np.minimum(np.floor(products).astype(np.int64), source - 1)
    return indices


@dataclass(frozen=True)
class Condition:
    """One text condition of the render: a rectangle and its prompt parts.

    ``prefixes`` start every token bag of this condition; ``suffixes`` are packed greedily into bags
    after them (see ``shared.prompts``). All are already normalised the Omost way.
    """

    rect: Rect
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    color: tuple[int, int, int]
    distance_to_viewer: float | None
    """None for the global condition, which is the farthest layer."""
    region_index: int | None
    """Index into ``canvas.local_descriptions``; None for the global condition."""

    @property
    def grid_mask(self) -> npt.NDArray[np.float32]:
        """The 90x90 float32 0/1 mask."""
        top, bottom, left, right = self.rect
        mask = np.zeros((GRID, GRID), dtype=np.float32)
        mask[top:bottom, left:right] = 1.0
        return mask

    def mask(self, height: int, width: int) -> npt.NDArray[np.float32]:
        """The mask at any resolution, sampled nearest-exact from the 90-grid, float32 0/1."""
        rows = nearest_exact_indices(GRID, height)
        cols = nearest_exact_indices(GRID, width)
        sampled: npt.NDArray[np.float32] = self.grid_mask[np.ix_(rows, cols)]
        return sampled


@dataclass(frozen=True)
class CanvasLayout:
    """The processed canvas: the global condition first, then regions farthest to nearest."""

    conditions: tuple[Condition, ...]
    global_color: tuple[int, int, int]

    @cached_property
    def _initial_grid(self) -> npt.NDArray[np.uint8]:
        # Omost's exact arithmetic and dtypes: float32 canvas, uint8 colours, a float64 blend
        # stored back into float32, then clip and truncate to uint8.
        image = np.zeros((GRID, GRID, 3), dtype=np.float32) + np.array([[self.global_color]], dtype=np.uint8)
        for condition in self.conditions[1:]:
            top, bottom, left, right = condition.rect
            color = np.array([[condition.color]], dtype=np.uint8)
            image[top:bottom, left:right] = 0.7 * color + 0.3 * image[top:bottom, left:right]
        return image.clip(0, 255).astype(np.uint8)

    def initial_image(self, height: int = GRID, width: int = GRID) -> npt.NDArray[np.uint8]:
        """The colour composition as uint8 RGB ``(height, width, 3)``, nearest-exact from the 90-grid."""
        grid = self._initial_grid
        if (height, width) == (GRID, GRID):
            return np.copy(grid)
        rows = nearest_exact_indices(GRID, height)
        cols = nearest_exact_indices(GRID, width)
        sampled: npt.NDArray[np.uint8] = grid[np.ix_(rows, cols)]
        return sampled


def _local_condition(canvas: Canvas, index: int, region: LocalDescription) -> Condition:
    suffixes = [*region.detailed_descriptions, region.tags, region.atmosphere, region.style, region.quality_meta]
    return Condition(
        rect=placement_rect(region.location, region.offset, region.area),
        prefixes=(
            normalise_subprompt(canvas.global_description.description),
            normalise_subprompt(region.description),
        ),
        suffixes=tuple(normalise_subprompt(s) for s in suffixes),
        color=COLORS[region.HTML_web_color_name],
        distance_to_viewer=region.distance_to_viewer,
        region_index=index,
    )


def layout_canvas(canvas: Canvas) -> CanvasLayout:
    """Omost's ``Canvas.process``: conditions in layer order with their rects and prompt parts."""
    glob = canvas.global_description
    global_condition = Condition(
        rect=(0, GRID, 0, GRID),
        prefixes=(normalise_subprompt(glob.description),),
        suffixes=tuple(normalise_subprompt(s) for s in [*glob.detailed_descriptions, glob.tags]),
        color=COLORS[glob.HTML_web_color_name],
        distance_to_viewer=None,
        region_index=None,
    )
    regions = [_local_condition(canvas, i, r) for i, r in enumerate(canvas.local_descriptions)]
    # sorted() is stable, so equal distances keep their code order, as in Omost.
    regions.sort(key=lambda c: c.distance_to_viewer or 0.0, reverse=True)
    return CanvasLayout(conditions=(global_condition, *regions), global_color=global_condition.color)


class Placement(NamedTuple):
    """An Omost placement: the three arguments that fix a region's rectangle."""

    location: str
    offset: str
    area: str


def all_placements() -> list[Placement]:
    """The 729 placements in tie-break order: offsets, then locations, then areas, each in contract order.

    ``no offset`` comes first in the contract, so among placements with the same rectangle the
    one without an offset wins.
    """
    return [Placement(loc, off, area) for off in OFFSETS for loc in LOCATIONS for area in AREAS]


def rect_distance(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """L1 distance between two (top, bottom, left, right) rectangles: the sum of the four edge moves."""
    return abs(a[0] - b[0]) + abs(a[1] - b[1]) + abs(a[2] - b[2]) + abs(a[3] - b[3])


def snap_to_placement(
    rect: tuple[float, float, float, float],
    prefer: tuple[str, str, str] | None = None,
) -> Placement:
    """The valid Omost placement whose rectangle is nearest to ``rect`` (the inverse of ``placement_rect``).

    ``rect`` is (top, bottom, left, right) in the 90-grid, floats allowed (a box being dragged).
    Distance is L1 on the four edges (``rect_distance``): moving a box changes its centre, resizing
    it its edges, and both count the same per grid cell. Ties go to ``prefer`` when it is among the
    nearest (so a region keeps its own arguments when its rectangle does not change), otherwise to
    the first in ``all_placements()`` order (``no offset`` first). Several placements share a
    rectangle after clipping, so the answer's rectangle is what is unique: for every placement
    ``p``, ``placement_rect(*snap_to_placement(placement_rect(*p))) == placement_rect(*p)``.
    The playground's ``layout.js`` (``snapToPlacement``) mirrors this function exactly.
    """
    edges = tuple(float(v) for v in rect)
    if len(edges) != 4 or not all(math.isfinite(v) for v in edges):
        raise ValueError(f"rect must be four finite numbers (top, bottom, left, right), got {edges!r}")
    best: Placement | None = None
    best_distance = math.inf
    for placement, candidate in _PLACEMENT_RECTS:
        distance = rect_distance(edges, candidate)
        if distance < best_distance:
            best, best_distance = placement, distance
    assert best is not None
    if prefer is not None:
        preferred = Placement(*prefer)
        if preferred in _PLACEMENT_SET and rect_distance(edges, placement_rect(*preferred)) == best_distance:
            return preferred
    return best


_PLACEMENT_SET = frozenset(all_placements())
_PLACEMENT_RECTS = tuple((p, placement_rect(*p)) for p in all_placements())
