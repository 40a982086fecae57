"""Omost's text encoding: per condition, prefix + greedy bags of sub-prompts, 77 tokens a bag.

Each bag becomes one CLIP window ``BOS + prefix ids + bag ids + EOS`` padded to 77 with the
tokenizer's own pad token (SDXL's two tokenizers pad differently: ``<|endoftext|>`` and ``!``).
Both encoders' penultimate hidden states are concatenated along channels (768 + 1280 = 2048 in
SDXL) and a condition's bags along tokens, so a condition with three bags is 231 tokens long.
The pooled embedding comes from encoder 2 on the global condition's first bag. The negative
prompt is an ordinary 77-token prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shared.contract import GRID
from shared.layout import CanvasLayout
from shared.prompts import PackedPrompt, pack_subprompts

log = logging.getLogger(__name__)

WINDOW = 77
CONTENT = WINDOW - 2  # BOS and EOS


@dataclass(frozen=True)
class EncodedText:
    """A job's text conditioning, negative first, ready for :class:`~.attention.RegionalJob`."""

    tokens: torch.Tensor
    """(1, T, channels): the negative prompt's 77 tokens, then every positive bag."""
    token_condition: torch.Tensor
    """(T,) long: 0 for the negative prompt's tokens, 1 + i for layout condition i."""
    condition_grids: torch.Tensor
    """(1 + conditions, 90, 90) float 0/1; the negative prompt's is all ones."""
    condition_kind: torch.Tensor
    """(1 + conditions,) long: 0 for the negative prompt, 1 for the layout conditions."""
    pooled_negative: torch.Tensor
    pooled_positive: torch.Tensor
    packing: tuple[PackedPrompt, ...]
    """How each layout condition's sub-prompts fell into bags."""

    @property
    def negative_tokens(self) -> int:
        return WINDOW


class OmostTextEncoder:
    """Both SDXL tokenizers and text encoders, used the Omost way."""

    def __init__(self, tokenizer: Any, tokenizer_2: Any, text_encoder: Any, text_encoder_2: Any) -> None:
        self.tokenizers = (tokenizer, tokenizer_2)
        self.encoders = (text_encoder, text_encoder_2)

    def ids(self, text: str, which: int = 0) -> list[int]:
        """Token ids of ``text`` without BOS/EOS and without truncation."""
        return list(self.tokenizers[which](text, add_special_tokens=False, truncation=False).input_ids)

    def count_tokens(self, text: str) -> int:
        """The real CLIP token count, the counter ``shared.prompts`` packs with."""
        return len(self.ids(text))

    def pack(self, prefixes: Sequence[str], suffixes: Sequence[str]) -> PackedPrompt:
        return pack_subprompts(prefixes, suffixes, self.count_tokens)

    def window(self, ids: Sequence[int], which: int) -> list[int]:
        """BOS + ids (cut at 75) + EOS, padded to 77 with this tokenizer's pad id (Omost's layout)."""
        tokenizer = self.tokenizers[which]
        window = [tokenizer.bos_token_id, *list(ids)[:CONTENT], tokenizer.eos_token_id]
        return window + [tokenizer.pad_token_id] * (WINDOW - len(window))

    def condition_windows(
        self, prefixes: Sequence[str], suffixes: Sequence[str]
    ) -> tuple[PackedPrompt, list[tuple[list[int], list[int]]]]:
        """The (ids for encoder 1, ids for encoder 2) windows of one condition, one per bag."""
        packed = self.pack(prefixes, suffixes)
        windows: list[tuple[list[int], list[int]]] = []
        # A condition without suffixes still gets one window holding its prefix.
        for bag in packed.bags or ((),):
            pair = []
            for which in (0, 1):
                ids = [i for prefix in prefixes for i in self.ids(prefix, which)]
                for index in bag:
                    # Omost crops each sub-prompt to 75 before packing; an overlong one is cut.
                    ids += self.ids(suffixes[index], which)[:CONTENT]
                pair.append(self.window(ids, which))
            windows.append((pair[0], pair[1]))
        return packed, windows

    @torch.inference_mode()
    def encode_windows(self, windows: Sequence[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden (W, 77, c1 + c2), pooled (W, p))`` for a batch of windows, both encoders at once."""
        hidden = []
        pooled = None
        for which, encoder in enumerate(self.encoders):
            ids = torch.tensor([w[which] for w in windows], dtype=torch.long, device=encoder.device)
            out = encoder(ids, output_hidden_states=True)
            # "-2": SDXL conditions on the penultimate layer of both encoders.
            hidden.append(out.hidden_states[-2])
            if which == 1:
                # Encoder 2 is CLIPTextModelWithProjection in SDXL: its projected embedding is the
                # pooled vector the UNet's added conditioning expects.
                pooled = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        assert pooled is not None
        return torch.cat(hidden, dim=-1), pooled

    def encode(self, layout: CanvasLayout, negative_prompt: str, dtype: torch.dtype) -> EncodedText:
        """Encode every condition of ``layout`` and the negative prompt in one batch per encoder."""
        all_windows = [(self.window(self.ids(negative_prompt, 0), 0), self.window(self.ids(negative_prompt, 1), 1))]
        owners = [0]
        packing = []
        for index, condition in enumerate(layout.conditions):
            packed, windows = self.condition_windows(condition.prefixes, condition.suffixes)
            if not packed.fits:
                # Not an error (Omost renders it too), but the end of those sub-prompts is lost.
                log.warning(
                    "condition %d: prefix of %d tokens, sub-prompts %s do not fit a 75-token window and are cut",
                    index,
                    packed.prefix_tokens,
                    list(packed.overlong),
                )
            packing.append(packed)
            all_windows += windows
            owners += [index + 1] * len(windows)
        hidden, pooled = self.encode_windows(all_windows)
        tokens = hidden.reshape(1, -1, hidden.shape[-1]).to(dtype)
        token_condition = torch.tensor(owners, dtype=torch.long).repeat_interleave(WINDOW)
        grids = np.stack([np.ones((GRID, GRID), np.float32)] + [c.grid_mask for c in layout.conditions])
        return EncodedText(
            tokens=tokens,
            token_condition=token_condition,
            condition_grids=torch.from_numpy(grids),
            condition_kind=torch.tensor([0] + [1] * len(layout.conditions), dtype=torch.long),
            pooled_negative=pooled[:1].to(dtype),
            # The global condition is the first one in layout order and its first bag is window 1.
            pooled_positive=pooled[1:2].to(dtype),
            packing=tuple(packing),
        )
