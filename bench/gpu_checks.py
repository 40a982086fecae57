"""The CUDA paths of the render engine on the tiny model, as plain checks (run by bench/gpu.sh).

Each check prints PASS or FAIL with its figure; the exit status is the number of failures. No
pytest and no Redis needed, so it runs on a bare GPU machine with only the engine's wheels.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from render_service.engine import RenderEngine  # noqa: E402
from render_service.engine.backends.common import fold_token_scale, pad_tokens, token_bucket  # noqa: E402
from render_service.engine.backends.packed import (  # noqa: E402
    packed_attend,
    packed_kernel,
    packed_key_scale,
    packed_mask,
)
from render_service.engine.backends.sdpa import additive_mask, attend, regional_attention  # noqa: E402
from render_service.engine.tiny import build_tiny_model  # noqa: E402
from shared.jobs import RenderRequest  # noqa: E402

CANVAS = {
    "global_description": {"description": "A cat and a dog on a sofa.", "HTML_web_color_name": "beige"},
    "local_descriptions": [
        {"location": "on the left", "offset": "no offset", "area": "a medium-sized square area",
         "distance_to_viewer": 2.0, "description": "A brown dog.", "HTML_web_color_name": "saddlebrown"},
        {"location": "on the right", "offset": "no offset", "area": "a small square area",
         "distance_to_viewer": 1.5, "description": "A grey cat.", "HTML_web_color_name": "gray"},
    ],
}  # fmt: skip
RESULTS: dict[str, dict[str, object]] = {}


def check(name: str, run: Callable[[], tuple[bool, object]]) -> None:
    started = time.perf_counter()
    try:
        ok, figure = run()
    except Exception as exc:  # a crash is a failed check, reported with its cause
        ok, figure = False, f"{type(exc).__name__}: {exc}"[:400]
    RESULTS[name] = {"ok": ok, "figure": figure, "seconds": round(time.perf_counter() - started, 2)}
    print(f"{'PASS' if ok else 'FAIL'} {name}: {figure} ({RESULTS[name]['seconds']} s)", flush=True)


def request(**overrides: object) -> RenderRequest:
    values: dict[str, object] = {"canvas": CANVAS, "width": 256, "height": 256, "steps": 4, "seed": 3}
    values.update(overrides)
    return RenderRequest.model_validate(values)


def pixels(engine: RenderEngine, req: RenderRequest) -> np.ndarray:
    return np.asarray(engine.render(req).images[0]).astype(int)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    model = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-sdxl"))
    fp16 = RenderEngine.load(model, device="cuda", dtype="fp16")

    def fp16_render() -> tuple[bool, object]:
        image = pixels(fp16, request())
        return bool(image.std() > 0), f"std {image.std():.1f}, tiled decode {fp16.tiled_decode}"

    def bf16_render() -> tuple[bool, object]:
        engine = RenderEngine.load(model, device="cuda", dtype="bf16")
        image = pixels(engine, request())
        return bool(image.std() > 0), f"std {image.std():.1f}"

    def cpu_offload() -> tuple[bool, object]:
        engine = RenderEngine.load(model, device="cuda", dtype="fp16", cpu_offload=True)
        gap = int(np.abs(pixels(engine, request()) - pixels(fp16, request())).max())
        return gap <= 2, f"max grey-level gap to the resident fp16 engine {gap}"

    def mask_padding() -> tuple[bool, object]:
        # Padded to a bucket, additive fp16 mask, forced onto the memory-efficient kernel, against
        # the unpadded bool-mask path and a float64 reference.
        gen = torch.Generator().manual_seed(0)
        batch, heads, pixels_n, tokens, dim = 2, 10, 1024, 385, 64
        q, k, v = (torch.randn(batch, heads, n, dim, generator=gen) for n in (pixels_n, tokens, tokens))
        mask = torch.rand(pixels_n, tokens, generator=gen) > 0.5
        mask[:, :77] = True
        scale = torch.rand(tokens, generator=gen) * 8 + 1
        ref = regional_attention(q.double(), k.double(), v.double(), mask, scale.double())
        cuda = [t.cuda().half() for t in (q, k, v)]
        padded = token_bucket(tokens)
        bias = additive_mask(mask.cuda()[None, None], torch.float16, padded)
        key = pad_tokens(fold_token_scale(cuda[1], scale.cuda(), 1 / math.sqrt(dim)), padded)
        value = pad_tokens(cuda[2], padded)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            fast = attend(cuda[0], key, value, bias)
        plain = regional_attention(*cuda, mask.cuda(), scale.cuda())
        error = float((fast.double().cpu() - ref).norm() / ref.norm())
        error_plain = float((plain.double().cpu() - ref).norm() / ref.norm())
        return error < 5e-3, f"rel. error padded {error:.2e}, unpadded {error_plain:.2e} ({tokens}->{padded} tokens)"

    def packed_attention() -> tuple[bool, object]:
        # FlashAttention's varlen kernel (fp16 and bf16) on SDXL's head shape, conditions as
        # rectangles over a 32x32 level, one vanished, two images, against float64.
        gen = torch.Generator().manual_seed(2)
        rows, heads, side, dim = 2, 10, 32, 64
        covered = torch.zeros(6, side, side, dtype=torch.bool)
        covered[0] = True
        for c, (top, left, size) in enumerate([(0, 0, 20), (10, 12, 16), (20, 0, 12), (4, 20, 10)], start=1):
            covered[c, top : top + size, left : left + size] = True
        covered = covered.flatten(1)  # condition 5 covers nothing
        owner = torch.repeat_interleave(torch.arange(6), torch.tensor([154, 77, 154, 77, 231, 77]))
        scale = (covered.shape[1] / covered.sum(1).clamp(min=1).float())[owner]
        q = torch.randn(rows, heads, side * side, dim, generator=gen)
        k, v = (torch.randn(1, heads, len(owner), dim, generator=gen) for _ in range(2))
        ref = regional_attention(q.double(), k.double(), v.double(), covered[owner].T, scale.double())
        mask = packed_mask(covered.cuda(), owner.cuda(), rows)
        errors = {}
        for dtype in (torch.float16, torch.bfloat16):
            key = fold_token_scale(k.cuda().to(dtype), scale.cuda(), packed_key_scale(1 / math.sqrt(dim), dim))
            packed_k, packed_v = (t[0].transpose(0, 1).contiguous() for t in (key, v.cuda().to(dtype)))
            out = packed_attend(q.cuda().to(dtype).transpose(1, 2), packed_k, packed_v, mask).transpose(1, 2)
            errors[str(dtype)] = float((out.double().cpu() - ref).norm() / ref.norm())
        kernel = packed_kernel("cuda", torch.float16)
        ok = kernel == "flash-varlen" and errors["torch.float16"] < 5e-3 and errors["torch.bfloat16"] < 3e-2
        return ok, f"kernel {kernel}, rel. error {errors}"

    def packed_render() -> tuple[bool, object]:
        sdpa = pixels(fp16, request(num_images=2))
        fp16.set_attention("packed")
        try:
            packed = pixels(fp16, request(num_images=2))
        finally:
            fp16.set_attention("sdpa")
        gap = int(np.abs(packed - sdpa).max())
        return gap <= 2, f"max grey-level gap packed vs SDPA path, fp16 {gap}"

    def tiled_decode() -> tuple[bool, object]:
        engine = RenderEngine.load(model, device="cuda", dtype="fp32")
        latents = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            engine.set_decode_tile(None)
            whole = engine._decode(latents)
            engine.set_decode_tile(256)
            tiled = engine._decode(latents)
            engine.set_decode_tile(None)
        gap = float((whole - tiled).abs().mean())
        return gap < 0.05, f"mean |tiled - whole| {gap:.4f} (images in [-1, 1])"

    def cancel_inside_step() -> tuple[bool, object]:
        from render_service.engine import RenderCanceled

        calls = [0]

        def should_cancel() -> bool:
            calls[0] += 1
            return calls[0] > 2  # the step check, then the first block, then stop at the second

        try:
            fp16.render(request(steps=4), should_cancel=should_cancel)
        except RenderCanceled as exc:
            return calls[0] == 3, f"canceled at call {calls[0]}: {exc}"
        return False, "not canceled"

    for name, run in [
        ("fp16 render", fp16_render),
        ("bf16 render", bf16_render),
        ("cpu_offload", cpu_offload),
        ("mask padding (efficient SDPA kernel, fp16)", mask_padding),
        ("packed attention (FlashAttention varlen, fp16/bf16)", packed_attention),
        ("packed render equals the SDPA path (fp16)", packed_render),
        ("tiled fp32 decode", tiled_decode),
        ("cancel inside a UNet call", cancel_inside_step),
    ]:
        check(name, run)
    if out:
        out.write_text(json.dumps(RESULTS, indent=2))
    return sum(not r["ok"] for r in RESULTS.values())


if __name__ == "__main__":
    sys.exit(main())
