"""The ``omost`` command line: run the whole stack, plan, render, generate and edit."""

from shared.cli.commands import app
from shared.cli.mcp import mcp_command

app.command("mcp")(mcp_command)


def main() -> None:
    app()


__all__ = ["app", "main"]
