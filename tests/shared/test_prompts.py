"""Omost's greedy sub-prompt packing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.prompts import approximate_clip_tokens, greedy_partition, pack_subprompts


def words(text: str) -> int:
    return len(text.split())


def test_greedy_partition_follows_omost() -> None:
    assert greedy_partition([30, 30, 30, 10], 75) == [[0, 1], [2, 3]]
    assert greedy_partition([80, 5], 75) == [[0], [1]]  # an oversize item gets a bag of its own
    assert greedy_partition([], 75) == []
    assert greedy_partition([75], 75) == [[0]]


@given(st.lists(st.integers(min_value=0, max_value=100), max_size=30), st.integers(min_value=1, max_value=100))
def test_partition_keeps_order_and_bounds(lengths: list[int], max_sum: int) -> None:
    bags = greedy_partition(lengths, max_sum)
    assert [i for bag in bags for i in bag] == list(range(len(lengths)))
    for bag in bags:
        assert sum(lengths[i] for i in bag) <= max_sum or len(bag) == 1


def test_pack_subprompts_reports_overlong() -> None:
    prefixes = ["one two three.", "four five."]
    suffixes = ["a b c.", " ".join(["w"] * 80), "d e."]
    packed = pack_subprompts(prefixes, suffixes, words, budget=75)
    assert packed.prefix_tokens == 5
    assert packed.bags == ((0,), (1,), (2,))
    assert packed.overlong == (1,)
    assert not packed.fits
    assert pack_subprompts(prefixes, ["a.", "b."], words).fits


def test_approximate_counter_is_in_clips_range() -> None:
    assert approximate_clip_tokens("a photo of a cat.") == 6
    assert approximate_clip_tokens("") == 0
