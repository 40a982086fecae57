"""Omost's greedy packing of sub-prompts into CLIP-sized token bags.

Each condition is encoded as one or more 77-token windows: BOS + prefix tokens + a bag of suffix
tokens + EOS. Suffixes are packed greedily in order so that prefix + bag stays within 75 tokens.
The token counter is pluggable: the renderer passes the real CLIP tokenizer, the planner may pass
the same or an estimate, so both can check that no sub-prompt will be cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shared.contract import SUB_PROMPT_TOKEN_BUDGET

TokenCounter = Callable[[str], int]


def greedy_partition(lengths: Sequence[int], max_sum: int) -> list[list[int]]:
    """Indices of ``lengths`` packed in order into bags whose sums stay within ``max_sum``.

    Omost's rule exactly: an item that does not fit closes the current bag and opens the next one;
    an item larger than ``max_sum`` gets a bag of its own (and is cropped by the encoder).
    """
    bags: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, length in enumerate(lengths):
        if total + length > max_sum:
            if current:
                bags.append(current)
            current, total = [index], length
        else:
            current.append(index)
            total += length
    if current:
        bags.append(current)
    return bags


@dataclass(frozen=True)
class PackedPrompt:
    """How one condition's sub-prompts fall into token bags."""

    prefix_tokens: int
    suffix_tokens: tuple[int, ...]
    bags: tuple[tuple[int, ...], ...]
    """Indices into the suffixes, one tuple per 77-token window."""
    overlong: tuple[int, ...]
    """Indices of suffixes that cannot fit a window with the prefix: their tail will be cut."""
    budget: int

    @property
    def fits(self) -> bool:
        return not self.overlong and self.prefix_tokens <= self.budget


def pack_subprompts(
    prefixes: Sequence[str],
    suffixes: Sequence[str],
    count_tokens: TokenCounter,
    budget: int = SUB_PROMPT_TOKEN_BUDGET,
) -> PackedPrompt:
    """Pack ``suffixes`` into bags after ``prefixes``, counting tokens with ``count_tokens``."""
    prefix_tokens = sum(count_tokens(p) for p in prefixes)
    suffix_tokens = tuple(count_tokens(s) for s in suffixes)
    allowed = budget - prefix_tokens
    bags = greedy_partition(suffix_tokens, allowed)
    overlong = tuple(i for i, n in enumerate(suffix_tokens) if n > allowed)
    return PackedPrompt(
        prefix_tokens=prefix_tokens,
        suffix_tokens=suffix_tokens,
        bags=tuple(tuple(bag) for bag in bags),
        overlong=overlong,
        budget=budget,
    )


def approximate_clip_tokens(text: str) -> int:
    """A tokenizer-free upper-ish estimate of CLIP tokens, for callers without the real vocabulary.

    CLIP's BPE gives about one token per short word and one per punctuation mark; long words split.
    """
    count = 0
    for word in text.split():
        core = word.strip(".,;:!?\"'()[]")
        count += max(1, -(-len(core) // 6)) if core else 0
        count += len(word) - len(core)
    return count
