"""Resolving a stage's typed config: YAML file < `--set` overrides < explicit command-line options.

Each stage defines its own frozen dataclass config next to its code (`data/`, `training/`, ...);
this module only merges the three sources and validates the result (see `common/configs.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from lmfusion_cli.common.configs import apply_overrides, build_config, read_yaml, set_key

T = TypeVar("T")


def resolve_config(
    cls: type[T], config_file: Path | None, overrides: list[str] | None, cli_values: dict[str, Any] | None = None
) -> T:
    """Build `cls` from `config_file`, then `--set` overrides, then the options given on the command line.

    `cli_values` maps dotted keys to values; a value of None means "not given" and is ignored, so
    YAML and `--set` values survive unless the option is passed explicitly."""
    data: dict[str, Any] = read_yaml(config_file) if config_file is not None else {}
    data = apply_overrides(data, overrides or [])
    for key, value in (cli_values or {}).items():
        if value is None:
            continue
        set_key(data, key.split("."), str(value) if isinstance(value, Path) else value, f"Config key '{key}'")
    return build_config(cls, data)
