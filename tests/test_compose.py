"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the code:
every command is a real entry point, every OMOST_* variable a real setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from planner_service.settings import PlannerSettings
from render_service.settings import RenderSettings
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
            owner = next((s for p, s in SETTINGS.items() if variable.startswith(p)), None)
            if variable == "OMOST_REDIS_URL":
                assert "OMOST_REDIS_URL" in env_names(PlannerSettings) & env_names(RenderSettings)
                continue
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
