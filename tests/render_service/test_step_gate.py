"""The tests' step gate (``render_service/worker/step_gate.py``): which files hold which job."""

from __future__ import annotations

import threading
from pathlib import Path

from render_service.worker.step_gate import StepGate as WorkerGate
from tests.support import StepGate


def test_files_hold_and_release_jobs(tmp_path: Path) -> None:
    worker, test = WorkerGate(tmp_path), StepGate(tmp_path)
    assert not worker.holds("job-a")
    test.hold_all()
    assert worker.holds("job-a") and worker.holds("job-b")
    test.let_pass("job-a")
    assert not worker.holds("job-a") and worker.holds("job-b")
    test.hold("job-a")
    assert worker.holds("job-a"), "a job held by name is held whatever else says"
    test.release_all()
    assert worker.holds("job-a") and not worker.holds("job-b")
    test.release("job-a")
    assert not worker.holds("job-a")
    assert list(tmp_path.iterdir()) == []


def test_unset_gate_holds_nothing() -> None:
    WorkerGate(None).wait("job-a", until=lambda: False)  # returns at once
    assert not WorkerGate(None).holds("job-a")


def test_a_wait_ends_on_release_or_when_the_job_must_stop(tmp_path: Path) -> None:
    worker, test = WorkerGate(tmp_path), StepGate(tmp_path)
    test.hold_all()
    stop = threading.Event()
    waiter = threading.Thread(target=worker.wait, args=("job-a", stop.is_set))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "held while the gate is closed"
    stop.set()  # canceled, superseded, over its limit or shutting down: the hold ends
    waiter.join(5)
    assert not waiter.is_alive()

    released = threading.Thread(target=worker.wait, args=("job-a", lambda: False))
    released.start()
    released.join(0.2)
    assert released.is_alive()
    test.release_all()
    released.join(5)
    assert not released.is_alive()
