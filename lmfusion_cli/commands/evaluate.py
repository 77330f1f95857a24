"""`lmfusion evaluate` (issue 9)."""

from __future__ import annotations

from lmfusion_cli.commands.common import ConfigOption, SetOption, not_available


def command(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Not available yet (issue 9)."""
    not_available("evaluate", 9)
