"""Layout maths against an independent transcription of Omost's ``Canvas.process``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings

from shared import layout_canvas
from shared.canvas import Canvas, GlobalDescription, LocalDescription
from shared.contract import contract
from shared.layout import nearest_exact_indices, normalise_subprompt, placement_rect
from tests.shared.canvas_strategies import canvases


def omost_process(canvas: Canvas) -> dict:
    """Omost's rules, written straight from the contract text (not from shared.layout)."""
    table = contract()
    colors = table["html_web_colors_rgb"]

    def safe_str(x: str) -> str:
        return x.strip(",. ") + "."

    g = canvas.global_description
    components = []
    for r in canvas.local_descriptions:
        x, y = table["locations_xy_center_in_90_grid"][r.location]
        dx, dy = table["offsets_dxdy_in_90_grid"][r.offset]
        w, h = table["areas_wh_in_90_grid"][r.area]
        x, y = x + dx, y + dy
        rect = [max(0, min(90, v)) for v in (y - h // 2, y + h // 2, x - w // 2, x + w // 2)]
        components.append(
            dict(
                rect=rect,
                distance_to_viewer=r.distance_to_viewer,
                color=np.array([[colors[r.HTML_web_color_name]]], dtype=np.uint8),
                prefixes=[safe_str(g.description), safe_str(r.description)],
                suffixes=[
                    safe_str(s) for s in [*r.detailed_descriptions, r.tags, r.atmosphere, r.style, r.quality_meta]
                ],
            )
        )
    components = sorted(components, key=lambda c: c["distance_to_viewer"], reverse=True)
    latent = np.zeros((90, 90, 3), dtype=np.float32) + np.array([[colors[g.HTML_web_color_name]]], dtype=np.uint8)
    for c in components:
        a, b, cc, d = c["rect"]
        latent[a:b, cc:d] = 0.7 * c["color"] + 0.3 * latent[a:b, cc:d]
    bag = [dict(mask=np.ones((90, 90), np.float32), prefixes=[safe_str(g.description)],
                suffixes=[safe_str(s) for s in [*g.detailed_descriptions, g.tags]])]
    for c in components:
        a, b, cc, d = c["rect"]
        m = np.zeros((90, 90), dtype=np.float32)
        m[a:b, cc:d] = 1.0
        bag.append(dict(mask=m, prefixes=c["prefixes"], suffixes=c["suffixes"]))
    return dict(initial_latent=latent.clip(0, 255).astype(np.uint8), bag_of_conditions=bag)


@settings(max_examples=300, deadline=None)
@given(canvases)
def test_layout_matches_omost_rules(canvas: Canvas) -> None:
    expected = omost_process(canvas)
    layout = layout_canvas(canvas)
    assert np.array_equal(layout.initial_image(), expected["initial_latent"])
    assert len(layout.conditions) == len(expected["bag_of_conditions"])
    for condition, reference in zip(layout.conditions, expected["bag_of_conditions"], strict=True):
        assert np.array_equal(condition.mask(90, 90), reference["mask"])
        assert list(condition.prefixes) == reference["prefixes"]
        assert list(condition.suffixes) == reference["suffixes"]


def region(
    location: str, offset: str, area: str, distance: float, color: str = "red", name: str = "x"
) -> LocalDescription:
    return LocalDescription(
        location=location, offset=offset, area=area, distance_to_viewer=distance, description=name,
        HTML_web_color_name=color,
    )


def canvas_of(*regions: LocalDescription) -> Canvas:
    glob = GlobalDescription(description="Scene", HTML_web_color_name="black")
    return Canvas(global_description=glob, local_descriptions=list(regions))


@pytest.mark.parametrize(
    ("placement", "rect"),
    [
        (("in the center", "no offset", "a small square area"), (20, 70, 20, 70)),
        (("on the left", "no offset", "a large horizontal area"), (15, 75, 0, 60)),
        (("on the top-right", "slightly to the upper-right", "a large square area"), (0, 40, 50, 90)),
        (("on the bottom", "slightly to the lower", "a medium-sized vertical area"), (45, 90, 20, 70)),
        (("on the bottom-left", "slightly to the left", "a small vertical area"), (45, 90, 0, 25)),
    ],
)
def test_hand_checked_rects(placement: tuple[str, str, str], rect: tuple[int, int, int, int]) -> None:
    assert placement_rect(*placement) == rect


def test_layer_order_far_to_near_ties_in_code_order() -> None:
    canvas = canvas_of(
        region("on the left", "no offset", "a small square area", 2.0, name="near"),
        region("on the right", "no offset", "a small square area", 5.0, name="far a"),
        region("in the center", "no offset", "a small square area", 5.0, name="far b"),
    )
    names = [c.prefixes[-1] for c in layout_canvas(canvas).conditions]
    assert names == ["Scene.", "far a.", "far b.", "near."]
    assert [c.region_index for c in layout_canvas(canvas).conditions] == [None, 1, 2, 0]


def test_colour_composition_blends_nearer_layers_last() -> None:
    canvas = canvas_of(region("in the center", "no offset", "a small square area", 1.0, color="white"))
    image = layout_canvas(canvas).initial_image()
    assert image[0, 0].tolist() == [0, 0, 0]
    assert image[45, 45].tolist() == [178, 178, 178]  # 0.7 * 255 + 0.3 * 0, truncated


def test_normalise_subprompt() -> None:
    assert normalise_subprompt(" , a cat... ") == "a cat."
    assert normalise_subprompt("") == "."


def test_masks_at_latent_resolutions() -> None:
    canvas = canvas_of(region("on the left", "no offset", "a large vertical area", 1.0))
    condition = layout_canvas(canvas).conditions[1]
    assert condition.rect == (0, 90, 0, 45)
    for height, width in [(128, 128), (144, 112), (8, 8), (45, 90), (27, 33)]:
        mask = condition.mask(height, width)
        assert mask.shape == (height, width) and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert mask[:, 0].all() and not mask[:, -1].any()


def test_nearest_exact_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    for size in [*range(1, 200), 256, 1024]:
        grid = torch.arange(90, dtype=torch.float32)[None, None, :, None]
        sampled = torch.nn.functional.interpolate(grid, size=(size, 1), mode="nearest-exact")
        assert sampled.flatten().long().tolist() == nearest_exact_indices(90, size).tolist(), size


def test_importing_shared_pulls_in_no_torch_or_fastapi() -> None:
    code = (
        "import sys, shared, shared.jobs, shared.grammar, shared.queue, shared.client\n"
        "print(sorted(m for m in ('torch', 'fastapi', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_shared_alone_loads_nothing_heavy() -> None:
    code = "import sys, shared\nprint(sorted(m for m in ('numpy', 'pydantic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
