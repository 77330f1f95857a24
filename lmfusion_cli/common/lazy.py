"""Package attributes imported on first use (PEP 562), so that reading a config does not load torch.

`lmfusion_cli.model` and `lmfusion_cli.sampling` export their public names this way: `import
lmfusion_cli.model.config` (the CLI's option parsing) runs the package `__init__`, which must stay light."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, sources: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `name` from `sources[name]` when asked: a submodule
    of `package` (`"config"`) or an absolute module name (`"lmfusion_cli.common.vae"`)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = sources[name] if "." in sources[name] else f"{package}.{sources[name]}"
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip this function
        return value

    return __getattr__
