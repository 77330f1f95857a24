"""Command-line options made from the config dataclasses: one field owns its flag's help and dotted key.

A command lists the config keys it offers as flags (`Flag("shapes.seed", "--shapes-seed")`, or just
the key); `config_command` adds one Typer option per flag to the command's signature, with the field's
docstring as help, plus `--config` and `--set`, and hands the command a `ConfigRequest` that resolves
the typed config (YAML < `--set` < flags). Every other key is listed in the command's epilog
(`config_epilog`), from the same docstrings, so a new field with a docstring shows up in `--help`
without touching a second file (litgpt / torchtitan generate their flags the same way)."""

from __future__ import annotations

import functools
import inspect
import textwrap
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer

from lmfusion_cli.common.configs import ConfigField, config_fields, parse_value

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file; command-line options override it.")
]


def set_option(example: str):
    """The repeatable `--set KEY=VALUE` option of one command; `example` must be valid for that command
    (tests/test_cli_examples.py runs every example of every `--help`)."""
    return Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help=f"Override a config key (any key listed below), repeatable: {example}.",
            metavar="KEY=VALUE",
        ),
    ]


@dataclass(frozen=True)
class Flag:
    """A config key offered as its own command-line option."""

    key: str
    """Dotted config key, e.g. `sampling.cfg_scale`."""
    flag: str | None = None
    """The option's name; None = `--` + the key's last part with `-` for `_` (`--cfg-scale`)."""
    short: str | None = None
    """A one-letter alias, e.g. `-i`."""
    csv: bool = False
    """A list-valued key given as one comma-separated value (`--tasks a,b`) instead of a repeated flag."""

    @property
    def name(self) -> str:
        return self.flag or "--" + self.key.rsplit(".", 1)[-1].replace("_", "-")

    @property
    def param(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


@dataclass
class ConfigRequest:
    """What the command line said about a config; `resolve()` builds and checks it."""

    cls: type
    config_file: Path | None
    overrides: list[str] | None
    values: dict[str, Any] = field(default_factory=dict)

    def resolve(self, **more: Any):
        """The typed config: YAML file < `--set` < flags (< `more`, dotted keys spelt `a__b`; None = not given)."""
        import lmfusion_cli.config  # looked up at call time: tests/test_cli_examples.py patches it

        extra = {k.replace("__", "."): v for k, v in more.items() if v is not None}
        return lmfusion_cli.config.resolve_config(self.cls, self.config_file, self.overrides, {**self.values, **extra})


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _option_type(f: ConfigField, flag: Flag) -> tuple[Any, str | None]:
    """(Typer type, metavar) of a field's option."""
    tp = _strip_optional(f.type)
    if get_origin(tp) is Literal:
        return str, "|".join(str(a) for a in get_args(tp))
    if get_origin(tp) in (tuple, list):
        return (str, "A,B,...") if flag.csv else (list[str], None)
    if tp in (int, float, bool):
        return tp, None
    return str, None


def _csv_items(raw: str, f: ConfigField) -> list[Any]:
    """The items of a comma-separated flag value, each a YAML scalar (`1.5` → 1.5) unless the field is a list
    of strings: a name such as `yes`, `off` or `null` must not become a bool or None."""
    items = [v.strip() for v in raw.split(",") if v.strip()]
    args = get_args(_strip_optional(f.type))
    return items if args and args[0] is str else [parse_value(v) for v in items]


def flag_help(f: ConfigField) -> str:
    """A flag's help: the field's docstring, its dotted key and default."""
    default = "" if f.default in (None, "", ()) else f", default {_show(f.default)}"
    return f"{f.doc} [{f.key}{default}]"


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) if value else "[]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_epilog(cls: type, flags: Sequence[Flag] = ()) -> str:
    """Every config key of `cls`, with its type, default and docstring (flags named where they exist)."""
    by_key = {f.key: f for f in flags}
    lines = ["Config keys (in the --config YAML, or --set KEY=VALUE; a flag above sets the same key):"]
    section = None
    for f in config_fields(cls):
        head = f.key.rsplit(".", 1)[0] if "." in f.key else ""
        if head != section:
            section = head
            lines += ["", "\b"]
        default = "" if f.default is None else f" = {_show(f.default)}" if f.default != "" else " = ''"
        flag = f"  ({by_key[f.key].name})" if f.key in by_key else ""
        lines.append(f"  {f.key}{default}  <{f.type_name}>{flag}")
        lines += textwrap.wrap(f.doc, 100, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False)
    return "\n".join(lines)


def config_command(cls: type, flags: Sequence[Flag | str], set_example: str) -> Callable:
    """Decorate `command(request: ConfigRequest, ...own options)`: add one Typer option per flag, with help
    from the config field's docstring, plus `--config` and `--set`; the epilog lists every key."""
    flags = [Flag(f) if isinstance(f, str) else f for f in flags]
    fields = {f.key: f for f in config_fields(cls)}
    unknown = [f.key for f in flags if f.key not in fields]
    if unknown:
        raise KeyError(f"{cls.__name__} has no field {unknown}")

    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "request"]
        generated = []
        for flag in flags:
            tp, metavar = _option_type(fields[flag.key], flag)
            names = (flag.name, flag.short) if flag.short else (flag.name,)
            if tp is bool and not names[0].startswith("--no-"):
                names = (f"{flag.name}/--no-{flag.name[2:]}",)
            option = typer.Option(*names, help=flag_help(fields[flag.key]), metavar=metavar)
            generated.append(
                inspect.Parameter(
                    flag.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[tp | None, option]
                )
            )
        tail = [
            inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOption),
            inspect.Parameter(
                "overrides", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=set_option(set_example)
            ),
        ]
        own_names = {p.name for p in own}

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {}
            for flag in flags:
                value = kwargs.pop(flag.param)
                if value is not None and flag.csv:
                    value = _csv_items(value, fields[flag.key])
                values[flag.key] = value
            request = ConfigRequest(cls, kwargs.pop("config"), kwargs.pop("overrides"), values)
            return fn(request, **{k: v for k, v in kwargs.items() if k in own_names})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated + tail
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer reads the signature above, not the function's own
        command.epilog = config_epilog(cls, flags)
        return command

    return decorate
