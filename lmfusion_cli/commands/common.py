"""Options shared by every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file; command-line options override it.")
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config key, repeatable: --set optim.lr=3e-4 --set train.steps=100."),
]


def not_available(command: str, issue: int) -> None:
    """Say plainly that a command is not built yet (never a fake success)."""
    typer.echo(f"error: `lmfusion {command}` is not available yet in this version (tracked in issue {issue}).",
               err=True)
    raise typer.Exit(code=1)
