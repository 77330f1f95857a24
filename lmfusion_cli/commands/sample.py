"""`lmfusion sample` (issue 8)."""

from __future__ import annotations

from lmfusion_cli.commands.common import ConfigOption, SetOption, not_available


def command(config: ConfigOption = None, overrides: SetOption = None) -> None:
    """Not available yet (issue 8)."""
    not_available("sample", 8)
