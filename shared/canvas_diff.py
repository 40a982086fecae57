"""What an edit changed: the regions added, removed and changed between two canvases.

A pure function of the two canvases, so the planner (``PlanResult.changes``), the CLI and the
playground all describe an edit the same way. Regions carry no identity of their own, so they are
matched: first byte-identical regions (in order), then the remaining pairs by how much of them is
the same (equal fields, then description similarity), best pair first; a caller that knows the
pairing (an edit made as a patch) passes it instead. A pair that shares too little
is not "the same region changed" but one removed and one added.
"""

from __future__ import annotations

from difflib import SequenceMatcher

from shared.canvas import GLOBAL_ARGUMENTS, LOCAL_ARGUMENTS, Canvas, LocalDescription
from shared.plans import CanvasChanges, RegionChange

SAME_REGION_MIN_FIELDS = 6
"""Of a region's 11 fields, with the same location: an edit that rewrites the subject of a region
("make the dog a corgi") keeps its place, size, depth, style and so on. The location must match too,
because a small model writes the same offset, style and quality into every region it adds."""

SAME_REGION_MIN_SIMILARITY = 0.6
"""Or descriptions this alike (difflib ratio, case-folded): the same subject, rewritten in place."""


def _changed_fields(before: LocalDescription, after: LocalDescription) -> list[str]:
    return [name for name in LOCAL_ARGUMENTS if getattr(before, name) != getattr(after, name)]


def _similarity(a: str, b: str) -> float:
    return SequenceMatcher(None, a.casefold(), b.casefold()).ratio()


def _pair_score(before: LocalDescription, after: LocalDescription) -> tuple[int, float] | None:
    """How alike two regions are, or None if too unlike to be one region changed."""
    equal = len(LOCAL_ARGUMENTS) - len(_changed_fields(before, after))
    similarity = _similarity(before.description, after.description)
    same_place = before.location == after.location and equal >= SAME_REGION_MIN_FIELDS
    if not same_place and similarity < SAME_REGION_MIN_SIMILARITY:
        return None
    return equal, similarity


def diff_canvases(previous: Canvas, new: Canvas, pairs: dict[int, int] | None = None) -> CanvasChanges:
    """The changes from ``previous`` to ``new``: changed global field names, then region changes
    (changed and added in the new canvas's order, then removed in the previous canvas's order).

    ``pairs`` (new index -> previous index), when the caller knows which region became which (an
    edit made as a patch does), replaces the matching; unpaired regions are added or removed."""
    glob_before, glob_after = previous.global_description, new.global_description
    global_fields = [name for name in GLOBAL_ARGUMENTS if getattr(glob_before, name) != getattr(glob_after, name)]
    old = list(previous.local_descriptions)
    fresh = list(new.local_descriptions)
    unmatched_old = set(range(len(old)))
    unmatched_new = set(range(len(fresh)))
    if pairs is not None:
        return CanvasChanges(global_fields=global_fields, regions=_region_changes(old, fresh, dict(pairs)))
    pairs = {}  # new index -> previous index
    for j, region in enumerate(fresh):  # identical regions first, each previous one used once
        i = next((i for i in sorted(unmatched_old) if old[i] == region), None)
        if i is not None:
            pairs[j] = i
            unmatched_old.discard(i)
            unmatched_new.discard(j)
    candidates = []
    for i in unmatched_old:
        for j in unmatched_new:
            score = _pair_score(old[i], fresh[j])
            if score is not None:
                # Ties go to the pair closest in position: regions usually keep their order.
                candidates.append((score, -abs(i - j), i, j))
    for _, _, i, j in sorted(candidates, reverse=True):
        if i in unmatched_old and j in unmatched_new:
            pairs[j] = i
            unmatched_old.discard(i)
            unmatched_new.discard(j)
    return CanvasChanges(global_fields=global_fields, regions=_region_changes(old, fresh, pairs))


def _region_changes(
    old: list[LocalDescription], fresh: list[LocalDescription], pairs: dict[int, int]
) -> list[RegionChange]:
    regions: list[RegionChange] = []
    for j, region in enumerate(fresh):
        if j not in pairs:
            regions.append(RegionChange(kind="added", index=j, description=region.description))
        elif old[pairs[j]] != region:
            fields = _changed_fields(old[pairs[j]], region)
            regions.append(RegionChange(kind="changed", index=j, description=region.description, fields=fields))
    paired = set(pairs.values())
    for i, region in enumerate(old):
        if i not in paired:
            regions.append(RegionChange(kind="removed", index=i, description=region.description))
    return regions
