"""Typed dataclass configs from YAML files and `--set key=value` overrides.

Configs are (frozen) dataclasses, nested. `build_config(cls, data)` turns a plain dict into one,
checking every key and type: an unknown key or a wrong type is a `UserError` naming the dotted key
(and the nearest valid one). A dataclass's own `__post_init__` checks values (`check_choices` for its
`Literal` fields); its `ValueError` becomes a `UserError`. `config_to_dict` is the inverse of
`build_config`, for every config class (no per-class `to_dict`/`from_dict`). `config_fields(cls)` lists
every dotted key with its type, default and field docstring: the one source of the CLI's flags and help
(`commands/common.py`)."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.hashing import sha256_json

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if get_origin(tp) in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp` (converting int→float, list→tuple, dict→dataclass)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except UserError as e:
                errors.append(e)
        raise UserError(f"Config key '{key}' must be {_type_name(tp)}, got {value!r}; fix it in the YAML or --set.")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise UserError(f"Config key '{key}' must be one of {_type_name(tp)}, got {value!r}.")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"Config key '{key}' must be a mapping of {tp.__name__} fields, got {value!r}.")
        return build_config(tp, value, prefix=key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"Config key '{key}' must be a list, got {value!r}; write it as [a, b, ...].")
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise UserError(f"Config key '{key}' must have {len(args)} items, got {len(value)}.")
            items = [_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else list(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"Config key '{key}' must be a mapping, got {value!r}.")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"Config key '{key}' must be a number, got {value!r}.")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"Config key '{key}' must be an integer, got {value!r}.")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"Config key '{key}' must be true or false, got {value!r}.")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"Config key '{key}' must be a string, got {value!r}.")
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise UserError(f"Config key '{key}' must be {_type_name(tp)}, got {value!r}.")


def build_config(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, validating keys and types recursively."""
    data = dict(data or {})
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown and prefix:
        raise UnknownKeyError(f"{prefix}.{unknown[0]}")
    if unknown:
        raise UserError(f"Unknown config key '{unknown[0]}'; {_nearest_key(cls, unknown[0])}")
    kwargs = {}
    try:
        for name, value in data.items():
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(value, hints[name], key)
    except UnknownKeyError as e:
        if prefix:
            raise
        raise UserError(f"Unknown config key '{e.key}'; {_nearest_key(cls, e.key)}") from None
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise UserError(f"Invalid config{' ' + repr(prefix) if prefix else ''}: {e}") from e


class UnknownKeyError(UserError):
    """A key no field of the config has (re-raised by the outermost `build_config` with the nearest key)."""

    def __init__(self, key: str):
        super().__init__(f"Unknown config key '{key}'")
        self.key = key

    def __str__(self) -> str:
        return f"Unknown config key '{self.key}'; check its spelling (`--help` lists every key)."


def _nearest_key(cls: type, key: str) -> str:
    """'did you mean ...?' for an unknown dotted key: a key with the same last part, else the closest spelling."""
    keys = [f.key for f in config_fields(cls)] + [
        f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(_hints(cls)[f.name])
    ]
    leaf = key.rsplit(".", 1)[-1]
    near = [k for k in keys if k.rsplit(".", 1)[-1] == leaf] or difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'? " if near else "check its spelling; "
    return f"{hint}`--help` lists every key."


def config_to_dict(cfg: Any) -> Any:
    """Plain-data view of a (nested) dataclass config, for YAML/JSON and hashing."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def config_hash(cfg: Any) -> str:
    return sha256_json(config_to_dict(cfg))[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=3e-4` → (['a', 'b'], 0.0003). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise UserError(f"Override '{text}' is not of the form key=value (e.g. --set optim.lr=3e-4).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"Override '{text}' has an empty key; write it as section.key=value.")
    return key.split("."), parse_value(raw)


def parse_value(raw: str) -> Any:
    """A command-line value as a YAML scalar or list (`3e-4` → 0.0003, `[a, b]` → ['a', 'b'], `x` → 'x')."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads `3e-4` as a string; accept plain-number spellings.
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `key=value` override set (nested keys by dots)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        set_key(data, path, value, f"Override '{text}'")
    return data


def set_key(data: dict[str, Any], path: list[str], value: Any, what: str) -> None:
    """Set `data[path[0]][path[1]]... = value` in place, making missing or empty (null) sections; a
    non-section on the way is a `UserError` starting with `what` (the override or option that set it)."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{what}: '{part}' is not a section.")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Config file {path} does not exist; check the --config path.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"Config file {path} is not UTF-8 text (a binary file?); pass a YAML config.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"Config file {path} is not valid YAML{where}; fix its syntax.") from e
    if not isinstance(data, dict):
        raise UserError(f"Config file {path} must hold a mapping of sections, not {type(data).__name__}.")
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> T:
    """YAML file (optional) + `--set` overrides → validated dataclass `cls`."""
    data = dict(base or {})
    if path is not None:
        data = deep_merge(data, read_yaml(path))
    data = apply_overrides(data, overrides or [])
    return build_config(cls, data)


def deep_merge(a: dict, b: dict) -> dict:
    """`a` with `b` laid over it, section by section (a new dict; a non-section value of `b` replaces)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def check_choices(cfg: Any) -> None:
    """Raise `ValueError` naming the first `Literal` field of dataclass `cfg` whose value is not a choice
    (for configs built directly in Python; `build_config` checks them while parsing)."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        tp = hints[f.name]
        if get_origin(tp) is Literal and getattr(cfg, f.name) not in get_args(tp):
            raise ValueError(f"{f.name} must be one of {', '.join(get_args(tp))}; got {getattr(cfg, f.name)!r}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), whitespace collapsed;
    inherited fields keep their base class's docstring unless redeclared."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # defined where no source is kept (an interactive session)
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


@dataclasses.dataclass(frozen=True)
class ConfigField:
    """One leaf of a (nested) config: its dotted key, type, default and docstring."""

    key: str
    type: Any
    default: Any
    doc: str

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


def config_fields(cls: type, prefix: str = "") -> list[ConfigField]:
    """Every leaf field of dataclass `cls` (nested sections flattened to dotted keys), in declaration order."""
    out: list[ConfigField] = []
    docs, hints = field_docs(cls), _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(config_fields(tp, key + "."))
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(ConfigField(key, tp, None if default is dataclasses.MISSING else default, docs.get(f.name, "")))
    return out
