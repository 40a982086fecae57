"""The compile path, cancel inside a UNet call, VAE options and warm-up, on the tiny model (CPU)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from render_service.engine import ModelNotFoundError, RenderCanceled, RenderEngine, RenderResult
from render_service.engine.backends import AttentionConfigError
from render_service.engine.batching import RenderTask
from render_service.engine.engine import parse_sizes
from render_service.engine.loading import load_pipeline
from render_service.engine.tiny import TINY, build_random_pipeline
from tests.render_engine.test_render import CANVAS, pixels, request

MANY_REGIONS = {**CANVAS, "local_descriptions": CANVAS["local_descriptions"] * 6}


def fresh_engine(tiny_model: Path) -> RenderEngine:
    """An engine of its own: compiling must not touch the session's shared one."""
    pipeline = load_pipeline(str(tiny_model), torch.float32)
    return RenderEngine.from_pipeline(pipeline, model_name="tiny", device="cpu", dtype=torch.float32)


def counting_compile(tiny_model: Path, attention: str = "sdpa") -> tuple[RenderEngine, list[torch.fx.GraphModule]]:
    """A fresh engine compiled with a backend that records each graph dynamo captures and runs it
    as is (what dynamo traced, executed eagerly), attending through ``attention``; ``fullgraph=True``
    makes any graph break an error."""
    graphs: list[torch.fx.GraphModule] = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    compiled = fresh_engine(tiny_model)
    compiled.compile_unet(backend=counting_backend)
    compiled.set_attention(attention)
    return compiled, graphs


def graph_calls(graphs: list[torch.fx.GraphModule], target: Any) -> int:
    return sum(node.target is target for g in graphs for node in g.graph.nodes)


def test_compiled_unet_is_one_graph_for_every_canvas(engine: RenderEngine, tiny_model: Path) -> None:
    compiled, graphs = counting_compile(tiny_model)
    few, many = request(steps=2), request(canvas=MANY_REGIONS, steps=2)
    assert len(compiled._prepare(few).encoded.tokens[0]) != len(compiled._prepare(many).encoded.tokens[0])
    for req in (few, many):
        ours = pixels(compiled.render(req))[0].astype(int)
        gap = np.abs(ours - pixels(engine.render(req))[0].astype(int))
        # The traced graph computes what eager does; on some CPUs (AVX-512 Xeon, not AMD EPYC) its
        # kernels round differently, which moved one pixel of 12,288 by one grey level.
        assert gap.max() <= 1 and (gap > 0).mean() < 1e-3, (gap.max(), (gap > 0).mean())
    assert len(graphs) == 1, "token counts in different buckets reuse the one graph"
    assert graph_calls(graphs, torch._C._nn.scaled_dot_product_attention) > 0, "the processors were traced"


def test_a_compiled_batch_is_one_more_graph_with_no_break(engine: RenderEngine, tiny_model: Path) -> None:
    """Same-shape batching under ``fullgraph=True``: a batch of two jobs (their own masks, a merged
    negative group) traces without a break into one graph of its own, reused by the next batch of
    that make-up, and renders what the eager engine renders."""
    compiled, graphs = counting_compile(tiny_model)
    jobs = [request(steps=1, seed=1), request(canvas=MANY_REGIONS, steps=1, seed=2)]
    compiled.render(jobs[0])
    assert len(graphs) == 1
    for _ in range(2):
        batched = compiled.render_batch([RenderTask(job) for job in jobs])
        eager = engine.render_batch([RenderTask(job) for job in jobs])
        for ours, theirs in zip(batched, eager, strict=True):
            assert isinstance(ours, RenderResult) and isinstance(theirs, RenderResult)
            gap = np.abs(pixels(ours)[0].astype(int) - pixels(theirs)[0].astype(int))
            assert gap.max() <= 1, gap.max()
    assert len(graphs) == 2, "one more graph for the batch, and only one"
    torch._dynamo.reset()


def test_flex_compiled_unet_is_one_graph_and_matches_the_sdpa_path(engine: RenderEngine, tiny_model: Path) -> None:
    """The FlexAttention backend (``set_attention("flex")``): no graph break, one graph for
    canvases in different buckets and with different condition counts, and the same images as the
    eager SDPA path within 1 grey level (different summation order). Several images per job are
    covered at the layer level (tests/render_engine/test_attention.py)."""
    compiled, graphs = counting_compile(tiny_model, attention="flex")
    for req in (request(steps=1), request(canvas=MANY_REGIONS, steps=1)):
        gap = np.abs(pixels(compiled.render(req))[0].astype(int) - pixels(engine.render(req))[0].astype(int))
        assert gap.max() <= 1, gap.max()
    assert len(graphs) == 1, "one graph for both canvases"
    assert graph_calls(graphs, torch.ops.higher_order.flex_attention) > 0, "regional attention ran as flex"


def test_flex_is_opt_in_and_compiled_only(tiny_model: Path) -> None:
    """Measured slower than the SDPA path on an H200 (docs/render-engine.md): never on by itself, and
    refused (with what to change) on an eager UNet, where it has no kernel of its own."""
    compiled = fresh_engine(tiny_model)
    with pytest.raises(AttentionConfigError, match=r"only in a compiled UNet.*OMOST_RENDER_COMPILE"):
        compiled.set_attention("flex")
    assert compiled.attention == "sdpa", "a refused choice keeps the one before"
    compiled.compile_unet(backend="eager")
    assert compiled.attention == "sdpa", "compiling does not switch backends"
    compiled.set_attention("flex")
    assert compiled._regions(compiled._prepare(request()).encoded, 1, True).backend.name == "flex"
    torch._dynamo.reset()


def micro_engine(tmp_path: Path) -> RenderEngine:
    """The tiny model cut to one resnet and one transformer layer per block: the fewest kernels for
    inductor to generate and build with a C++ compiler, with every kind of layer still there."""
    shape = replace(TINY, unet={**TINY.unet, "layers_per_block": 1, "transformer_layers_per_block": (1, 1)})
    pipeline = build_random_pipeline(shape)
    return RenderEngine.from_pipeline(pipeline, model_name="micro", device="cpu", dtype=torch.float32)


@pytest.mark.slow
def test_inductor_compiled_render_matches_eager(tmp_path: Path) -> None:
    """The real compiler (inductor, CPU), 0 graph breaks: same seed, same image within 2 grey levels."""
    torch._dynamo.reset()
    eager = micro_engine(tmp_path)
    compiled = micro_engine(tmp_path)
    compiled.compile_unet()
    req = request(steps=1)
    gap = np.abs(pixels(compiled.render(req))[0].astype(int) - pixels(eager.render(req))[0].astype(int))
    assert gap.max() <= 2, gap.max()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


def test_cancel_takes_effect_inside_a_unet_call(engine: RenderEngine) -> None:
    asked = []

    def should_cancel() -> bool:
        asked.append(len(progress))
        return len(asked) == 3  # the check before step 1, the first UNet block, then the second block

    progress: list[int] = []
    with pytest.raises(RenderCanceled, match="after 0 of"):
        engine.render(request(steps=4), on_step=lambda d, t: progress.append(d), should_cancel=should_cancel)
    assert progress == [] and asked == [0, 0, 0], "stopped in the middle of the first UNet call"
    assert engine._cancel_check is None
    blocks = len(engine.unet.down_blocks) + 1 + len(engine.unet.up_blocks)
    asked.clear()
    engine.render(request(steps=2), should_cancel=lambda: asked.append(1) is not None and False)
    assert len(asked) == 2 * (1 + blocks), "asked before every step and every block"


def test_tiled_decode_matches_whole_decode(engine: RenderEngine) -> None:
    latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = engine._decode(latents)
        engine.set_decode_tile(256)
        try:
            assert engine.vae.use_tiling and engine.vae.tile_latent_min_size == 32
            tiled = engine._decode(latents)
        finally:
            engine.set_decode_tile(None)
    gap = (whole - tiled).abs()
    assert whole.shape == tiled.shape == (1, 3, 512, 512)
    # Random VAE weights, 4 tiles with blended 25 % overlaps; images are in [-1, 1]. (A trained VAE
    # is smoother; on CUDA bench/gpu_checks.py sees the same 0.022 on this model.)
    assert float(gap.mean()) < 0.03 and not torch.equal(whole, tiled), float(gap.mean())


def test_fp32_model_decodes_whole(engine: RenderEngine) -> None:
    assert not engine.tiled_decode and not engine.vae.use_tiling


def test_named_vae_replaces_the_checkpoints(tiny_model: Path) -> None:
    with_vae = RenderEngine.load(str(tiny_model), device="cpu", vae=str(tiny_model))  # a pipeline folder's vae/
    assert with_vae.render(request(steps=1)).images[0].size == (64, 64)
    with pytest.raises(ModelNotFoundError, match="VAE"):
        RenderEngine.load(str(tiny_model), device="cpu", vae="/nonexistent/vae")


def test_warm_up_renders_each_size(engine: RenderEngine) -> None:
    assert engine.warm_up([(64, 64), (96, 64)]) > 0
    assert parse_sizes("1024x1024, 896x1152") == [(1024, 1024), (896, 1152)]
    assert parse_sizes("") == []
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_sizes("1024")


def test_compile_refuses_cpu_offload(engine: RenderEngine) -> None:
    engine._offloaded = True
    try:
        with pytest.raises(ValueError, match="cpu_offload"):
            engine.compile_unet()
    finally:
        engine._offloaded = False
