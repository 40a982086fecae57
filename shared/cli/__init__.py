"""The ``omost`` command line: run the whole stack, plan, render, generate and edit."""

import signal
from types import FrameType

from shared.cli.commands import app


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM and SIGHUP stop the stack exactly as Ctrl-C does, children first, instead of
    # ending this process alone and leaving them behind.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    for name in ("SIGTERM", "SIGHUP"):  # no SIGHUP on Windows
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _interrupt)
    app()


__all__ = ["app", "main"]
