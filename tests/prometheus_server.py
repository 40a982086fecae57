"""Debian's Prometheus as a child process of a test, running the shipped deploy/observability config.

The scrape config and the alert rules are the files an operator loads; only the targets (the test's
own ports) and the intervals (1 s, so a test waits seconds, not minutes) are changed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import ChildProcess, free_port, wait_until

OBSERVABILITY = Path(__file__).resolve().parents[1] / "deploy" / "observability"
INSTALL_HINT = "Debian's prometheus package provides it: apt-get install prometheus (.ci/run installs it)"


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; raises, saying how to install it, when missing."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; {INSTALL_HINT}")
    return path


def dashboard_expressions(dashboard: dict[str, Any], rate_interval: str = "5m") -> list[str]:
    """Every query of the Grafana dashboard, with Grafana's ``$__rate_interval`` made a plain range."""
    return [
        target["expr"].replace("$__rate_interval", rate_interval)
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


_NAME = re.compile(r"\b(omost_[a-z0-9_]+|up)\b(?!\s*\()")


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (ours all start with ``omost_``; ``up`` is Prometheus's)."""
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    return set(_NAME.findall(without_strings))


class PrometheusServer:
    """``prometheus`` on a free loopback port with a temporary storage folder."""

    def __init__(self, folder: Path, targets: dict[str, str], interval: str = "1s") -> None:
        config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
        config["global"].update(scrape_interval=interval, evaluation_interval=interval)
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        folder.mkdir(parents=True, exist_ok=True)
        for rules in config["rule_files"]:
            shutil.copy(OBSERVABILITY / rules, folder / rules)
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            binary("prometheus"),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        self.child = ChildProcess(args, log_dir=folder)

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.child.start()

        def ready() -> bool:
            assert self.child.process is not None
            if self.child.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.child.log()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=2).is_success
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, 0.2, "prometheus ready")
        return self

    def stop(self) -> None:
        self.child.stop()

    def api(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of ``expression`` now: a list of ``{"metric": labels, "value": [t, "v"]}``."""
        return list(self.api("query", query=expression)["result"])

    def value(self, expression: str) -> float:
        """The one value of a query that yields a single series (0 when it yields none)."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else 0.0
