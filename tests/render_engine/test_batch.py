"""Several jobs in one UNet batch: cross-job attention masks, and renders equal to each job alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from render_service.engine import RenderCanceled, RenderEngine, RenderResult
from render_service.engine.attention import RegionalCrossAttnProcessor, RegionalJob, stack_jobs
from render_service.engine.batching import RenderTask, batch_key
from tests.render_engine.test_attention import GRID, make_job
from tests.render_engine.test_render import request

NAME = "test.attn2.processor"
OTHER_CANVAS = {
    "global_description": {"description": "A lighthouse at night.", "HTML_web_color_name": "navy"},
    "local_descriptions": [
        {
            "location": "in the center",
            "offset": "no offset",
            "area": "a large vertical area",
            "distance_to_viewer": 3.0,
            "description": "A white lighthouse with a bright lamp.",
            "detailed_descriptions": ["Red stripes.", "A beam of light.", "Rocks below."],
            "HTML_web_color_name": "white",
        }
    ],
}


@pytest.fixture
def layer() -> Attention:
    torch.manual_seed(0)
    layer = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16)
    layer.set_processor(RegionalCrossAttnProcessor(NAME))
    return layer


def inputs(layer: Attention, job: RegionalJob, context: torch.Tensor) -> dict:
    return {NAME: job.layer_inputs(layer, context, (8, 8), torch.float32)}


def call(layer: Attention, hidden: torch.Tensor, regional: dict) -> torch.Tensor:
    with torch.no_grad():
        return layer(hidden, encoder_hidden_states=torch.zeros(len(hidden), 1, 24), regional=regional)


def two_jobs() -> tuple[RegionalJob, RegionalJob]:
    """Job A: one image with CFG and a left-half region; job B: two images, two regions, more tokens."""
    a = make_job([(0, GRID, 0, GRID), (0, GRID, 0, GRID // 2)], tokens_per_condition=4, rows=[0, 1])
    b = make_job([(0, GRID, 0, GRID), (0, 45, 0, 45), (45, 90, 45, 90)], tokens_per_condition=6, rows=[0, 0, 1, 1])
    return a, b


def test_stacked_rows_equal_each_job_alone(layer: Attention) -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = two_jobs()
    context_a, context_b = torch.randn(1, 12, 24, generator=gen), torch.randn(1, 24, 24, generator=gen)
    hidden_a, hidden_b = torch.randn(2, 64, 32, generator=gen), torch.randn(4, 64, 32, generator=gen)
    alone_a = call(layer, hidden_a, inputs(layer, a, context_a))
    alone_b = call(layer, hidden_b, inputs(layer, b, context_b))

    # Kind-major rows: [A negative, B negative x 2 | A positive, B positive x 2].
    hidden = torch.cat([hidden_a[:1], hidden_b[:2], hidden_a[1:], hidden_b[2:]])
    stacked = call(layer, hidden, stack_jobs([inputs(layer, a, context_a), inputs(layer, b, context_b)], [1, 2], True))
    torch.testing.assert_close(stacked[[0, 3]], alone_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stacked[[1, 2, 4, 5]], alone_b, rtol=1e-5, atol=1e-6)


def test_a_job_never_sees_another_jobs_tokens(layer: Attention) -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = two_jobs()
    context_a, context_b = torch.randn(1, 12, 24, generator=gen), torch.randn(1, 24, 24, generator=gen)
    hidden = torch.randn(6, 64, 32, generator=gen)

    def run(context_b: torch.Tensor) -> torch.Tensor:
        return call(layer, hidden, stack_jobs([inputs(layer, a, context_a), inputs(layer, b, context_b)], [1, 2], True))

    before = run(context_b)
    after = run(context_b + 5.0)  # every token of job B, negative prompt included
    rows_a, rows_b = [0, 3], [1, 2, 4, 5]
    assert torch.equal(after[rows_a], before[rows_a]), "job A's rows ignore job B's text"
    assert not torch.allclose(after[rows_b], before[rows_b])


def test_same_negative_prompt_is_one_attention_call(layer: Attention) -> None:
    gen = torch.Generator().manual_seed(3)
    a, b = two_jobs()
    negative = torch.randn(1, 4, 24, generator=gen)  # A's and B's negative prompt: condition 0's tokens
    context_a = torch.cat([negative, torch.randn(1, 8, 24, generator=gen)], dim=1)
    context_b = torch.cat([negative, torch.randn(1, 20, 24, generator=gen)], dim=1)
    b = make_job([(0, GRID, 0, GRID), (0, 45, 0, 45)], tokens_per_condition=4, rows=[0, 0, 1, 1])
    context_b = context_b[:, :12]
    groups = stack_jobs([inputs(layer, a, context_a), inputs(layer, b, context_b)], [1, 2], True)[NAME]
    assert [(group.start, group.stop, group.mask is None) for group in groups] == [
        (0, 3, True), (3, 4, False), (4, 6, False)
    ]  # fmt: skip

    different = torch.cat([negative + 1.0, context_b[:, 4:]], dim=1)
    groups = stack_jobs([inputs(layer, a, context_a), inputs(layer, b, different)], [1, 2], True)[NAME]
    assert [(group.start, group.stop) for group in groups] == [(0, 1), (1, 3), (3, 4), (4, 6)]


def test_stacking_without_cfg_and_bad_counts(layer: Attention) -> None:
    a = make_job([(0, GRID, 0, GRID)], tokens_per_condition=3, rows=[1])
    b = make_job([(0, GRID, 0, GRID)], tokens_per_condition=3, rows=[1, 1])
    context = torch.randn(1, 6, 24)
    groups = stack_jobs([inputs(layer, a, context), inputs(layer, b, context)], [1, 2], False)[NAME]
    assert [(group.start, group.stop) for group in groups] == [(0, 1), (1, 3)], "masked groups never merge"
    with pytest.raises(ValueError, match="2 jobs but 1"):
        stack_jobs([inputs(layer, a, context), inputs(layer, b, context)], [1], False)


# ---------------------------------------------------------------- renders


def pixels(result: RenderResult | Exception) -> list[np.ndarray]:
    assert isinstance(result, RenderResult), result
    return [np.asarray(image, dtype=np.int16) for image in result.images]


def assert_same_images(batched: RenderResult | Exception, alone: RenderResult) -> None:
    ours, theirs = pixels(batched), pixels(alone)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert np.abs(a - b).max() <= 1, "a batched job's image equals its image rendered alone (1 grey level)"


def test_batch_renders_each_job_as_if_alone(engine: RenderEngine) -> None:
    jobs = [
        request(seed=3),
        request(canvas=OTHER_CANVAS, seed=40, num_images=2, guidance_scale=9.0),
        request(seed=3, negative_prompt="blurry, watermark"),
    ]
    results = engine.render_batch([RenderTask(job) for job in jobs])
    for job, result in zip(jobs, results, strict=True):
        alone = engine.render(job)
        assert_same_images(result, alone)
        assert isinstance(result, RenderResult) and result.seeds == alone.seeds
        assert result.timings["batch_jobs"] == 3
    assert not np.array_equal(pixels(results[0])[0], pixels(results[2])[0]), "each job keeps its negative prompt"


@pytest.mark.parametrize(
    "overrides",
    [
        {"guidance_scale": 1.0},  # no CFG half
        {"sampler": "euler_ancestral"},  # ancestral: each image's own noise stream
        {"initial_latent_strength": 0.6},
        {"hires_fix": {"scale": 1.5, "steps": 2, "denoise": 0.5}},
    ],
)
def test_batch_equals_alone_for_every_loop_shape(engine: RenderEngine, overrides: dict) -> None:
    jobs = [request(seed=5, **overrides), request(canvas=OTHER_CANVAS, seed=9, **overrides)]
    results = engine.render_batch([RenderTask(job) for job in jobs])
    for job, result in zip(jobs, results, strict=True):
        assert_same_images(result, engine.render(job))


def test_batch_key_says_what_may_share_a_batch() -> None:
    base = request()
    assert batch_key(base) == batch_key(request(canvas=OTHER_CANVAS, seed=1, num_images=3, guidance_scale=12.0))
    for changed in ({"width": 72}, {"steps": 4}, {"sampler": "euler_ancestral"}, {"guidance_scale": 1.0},
                    {"initial_latent_strength": 0.5}, {"hires_fix": {"scale": 1.5}}):  # fmt: skip
        assert batch_key(request(**changed)) != batch_key(base), changed


def test_a_batch_of_mixed_shapes_is_refused(engine: RenderEngine) -> None:
    with pytest.raises(ValueError, match="must share"):
        engine.render_batch([RenderTask(request()), RenderTask(request(steps=4))])


def test_invalid_jobs_get_their_own_error(engine: RenderEngine) -> None:
    # Requests are validated at the API; the engine checks again (a size not a multiple of 8).
    bad = [request(seed=s).model_copy(update={"width": 60}) for s in (1, 2)]
    results = engine.render_batch([RenderTask(job) for job in bad])
    assert all(isinstance(result, ValueError) and "multiple of 8" in str(result) for result in results)
    with pytest.raises(ValueError, match="multiple of 8"):
        engine.render(bad[0])


def test_one_canceled_job_leaves_the_others(engine: RenderEngine) -> None:
    steps: dict[str, list[int]] = {"kept": [], "canceled": []}
    jobs = [request(seed=3, steps=5), request(canvas=OTHER_CANVAS, seed=4, steps=5)]
    tasks = [
        RenderTask(jobs[0], on_step=lambda done, total: steps["kept"].append(done)),
        RenderTask(
            jobs[1],
            on_step=lambda done, total: steps["canceled"].append(done),
            should_cancel=lambda: len(steps["canceled"]) >= 2,
        ),
    ]
    kept, canceled = engine.render_batch(tasks)
    assert isinstance(canceled, RenderCanceled) and "after 2 of 5 steps" in str(canceled)
    assert steps == {"kept": [1, 2, 3, 4, 5], "canceled": [1, 2]}, "a canceled job reports no more steps"
    assert_same_images(kept, engine.render(jobs[0]))


def test_a_batch_stops_when_every_job_is_canceled(engine: RenderEngine) -> None:
    done: list[int] = []
    tasks = [
        RenderTask(request(seed=s, steps=8), on_step=lambda d, t: done.append(d), should_cancel=lambda: len(done) >= 2)
        for s in (1, 2)
    ]
    results = engine.render_batch(tasks)
    assert all(isinstance(result, RenderCanceled) for result in results)
    assert max(done) == 1, "the batch stopped after the step in which both were canceled"
    assert engine._cancel_check is None


def test_batch_bench_runs_and_batched_images_match(tiny_model, tmp_path) -> None:
    """bench/batch_bench.py, smallest run: it times each batch size and checks batched images against alone."""
    from bench.batch_bench import main

    report = tmp_path / "batch.json"
    main(["--model", str(tiny_model), "--size", "64", "--steps", "1", "--jobs", "2", "--batches", "2",
          "--repeats", "1", "--json", str(report)])  # fmt: skip
    rows = json.loads(report.read_text())["rows"]
    assert [row["batch"] for row in rows] == [1, 2]
    assert all(row["seconds"] > 0 for row in rows) and rows[1]["max_pixel_gap"] <= 1
