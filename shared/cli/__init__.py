"""The ``omost`` command line: run the whole stack, plan, render, generate and edit."""

from shared.cli.commands import app


def main() -> None:
    app()


__all__ = ["app", "main"]
