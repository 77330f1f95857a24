"""Options shared by every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file; command-line options override it.")
]


def set_option(example: str):
    """The repeatable `--set KEY=VALUE` option of one command; `example` must be valid for that command
    (tests/test_cli_examples.py runs every example of every `--help`)."""
    return Annotated[
        list[str] | None,
        typer.Option("--set", help=f"Override a config key (a field of the YAML), repeatable: {example}."),
    ]


def not_available(command: str, issue: int) -> None:
    """Say plainly that a command is not built yet (never a fake success)."""
    typer.echo(
        f"error: `lmfusion {command}` is not available yet in this version (tracked in issue {issue}).", err=True
    )
    raise typer.Exit(code=1)
