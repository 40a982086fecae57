"""Omost's text encoding with the tiny model's real CLIP vocabulary."""

from __future__ import annotations

import torch

from render_service.engine.text import WINDOW
from shared.canvas import Canvas
from shared.layout import layout_canvas

LONG_DETAILS = [
    "The dragon's scales shimmer in iridescent shades of emerald and gold, catching the light of the burning sky.",
    "Its enormous wings are spread wide, membranes torn in places from countless battles fought over the centuries.",
    "Smoke curls from its nostrils, and its eyes glow a fierce amber that seems to see straight through the viewer.",
    "A rider in battered silver armour clings to its neck, holding a banner that snaps and flutters in the wind.",
    "Below, the ruined castle walls are lit by fires, and tiny figures flee across the crumbling stone bridge.",
]


def canvas_with_long_region() -> Canvas:
    return Canvas.model_validate(
        {
            "global_description": {
                "description": "An epic battle between a dragon and a knight above a ruined castle at dusk.",
                "detailed_descriptions": ["The sky is orange and purple.", "Embers drift through the air."],
                "tags": "dragon, knight, castle, battle, fantasy, dusk, fire",
                "HTML_web_color_name": "darkslateblue",
            },
            "local_descriptions": [
                {
                    "location": "in the center",
                    "offset": "no offset",
                    "area": "a large square area",
                    "distance_to_viewer": 3.0,
                    "description": "A huge green dragon in flight.",
                    "detailed_descriptions": LONG_DETAILS,
                    "tags": "dragon, wings, scales, fire, smoke",
                    "atmosphere": "Menacing and powerful.",
                    "style": "Epic fantasy illustration.",
                    "quality_meta": "Highly detailed, dramatic lighting.",
                    "HTML_web_color_name": "seagreen",
                }
            ],
        }
    )


def test_tokenizers_have_real_clip_ids(engine) -> None:
    tokenizer, tokenizer_2 = engine.text.tokenizers
    assert engine.text.ids("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert engine.text.ids("a photo of a cat", which=1) == [320, 1125, 539, 320, 2368]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    # SDXL's two tokenizers pad differently; Omost pads each bag with its own tokenizer's pad.
    assert tokenizer.pad_token_id == 49407 and tokenizer_2.pad_token_id == 0
    assert tokenizer.model_max_length == tokenizer_2.model_max_length == 77


def test_bags_fit_75_real_tokens(engine) -> None:
    layout = layout_canvas(canvas_with_long_region())
    region = layout.conditions[1]
    packed, windows = engine.text.condition_windows(region.prefixes, region.suffixes)
    assert len(packed.bags) >= 3, packed
    assert packed.fits
    assert sorted(i for bag in packed.bags for i in bag) == list(range(len(region.suffixes)))
    prefix_ids = [i for p in region.prefixes for i in engine.text.ids(p)]
    for bag, (ids_1, ids_2) in zip(packed.bags, windows, strict=True):
        content = prefix_ids + [i for s in bag for i in engine.text.ids(region.suffixes[s])]
        assert len(content) <= 75
        assert len(ids_1) == len(ids_2) == WINDOW
        assert ids_1[: len(content) + 2] == [49406, *content, 49407]
        assert set(ids_1[len(content) + 2 :]) <= {49407}
        assert set(ids_2[len(content) + 2 :]) <= {0}
        assert packed.prefix_tokens + sum(packed.suffix_tokens[s] for s in bag) == len(content)


def test_encoding_layout(engine) -> None:
    layout = layout_canvas(canvas_with_long_region())
    encoded = engine.text.encode(layout, "lowres, bad anatomy", torch.float32)
    bags = [len(p.bags) for p in encoded.packing]
    assert encoded.tokens.shape == (1, WINDOW * (1 + sum(bags)), 64)  # 32 + 32 channels in the tiny model
    expected_owner = [0] * WINDOW + [c + 1 for c, n in enumerate(bags) for _ in range(n * WINDOW)]
    assert encoded.token_condition.tolist() == expected_owner
    assert encoded.condition_grids.shape == (1 + len(layout.conditions), 90, 90)
    assert encoded.condition_grids[0].min() == 1

    # The negative prompt is an ordinary 77-token prompt; pooled comes from the global's first bag.
    negative = [
        tokenizer("lowres, bad anatomy", padding="max_length", max_length=77).input_ids
        for tokenizer in engine.text.tokenizers
    ]
    first_global = engine.text.condition_windows(layout.conditions[0].prefixes, layout.conditions[0].suffixes)[1][0]
    hidden, pooled = engine.text.encode_windows([tuple(negative), first_global])
    torch.testing.assert_close(encoded.tokens[0, :WINDOW], hidden[0])
    torch.testing.assert_close(encoded.tokens[0, WINDOW : 2 * WINDOW], hidden[1])
    torch.testing.assert_close(encoded.pooled_negative, pooled[:1])
    torch.testing.assert_close(encoded.pooled_positive, pooled[1:2])
    assert encoded.pooled_positive.shape == (1, 32)
