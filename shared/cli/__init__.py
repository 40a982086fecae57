"""The ``omost`` command line: run the whole stack, plan, render, generate and edit.

Nothing is imported here: the stack starts its services through ``python -m shared.cli.guard``,
and they should not load typer and rich (nor the guard twice) on the way.
"""

import signal
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM and SIGHUP stop the stack exactly as Ctrl-C does, children first, instead of
    # ending this process alone and leaving them behind.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    import sys

    from shared.cli.commands import app
    from shared.service.tracing import command_span

    for name in ("SIGTERM", "SIGHUP"):  # no SIGHUP on Windows
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _interrupt)
    with command_span(sys.argv[1:]):  # traced when OTEL_* asks for it
        app()


__all__ = ["main"]
