"""A CPU worker's torch thread count: the setting wins, else half the cores (at least one).

Measured on 2 cores beside one busy process: the tiny model's 25 steps took 19.3 s with 2 threads and
2.4 s with 1, because every parallel op waits for the thread the scheduler put aside.
"""

from __future__ import annotations

import pytest

from render_service.settings import RenderSettings
from render_service.worker.core import cpu_threads


@pytest.mark.parametrize(("setting", "cores", "expected"), [(None, 2, 1), (None, 1, 1), (None, 16, 8), (3, 2, 3)])
def test_thread_count(setting: int | None, cores: int, expected: int) -> None:
    assert cpu_threads(setting, cores) == expected


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMOST_RENDER_CPU_THREADS", "4")
    assert RenderSettings().cpu_threads == 4
    monkeypatch.setenv("OMOST_RENDER_CPU_THREADS", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        RenderSettings()
