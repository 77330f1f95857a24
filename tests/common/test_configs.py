"""Typed config loading: YAML + --set overrides + CLI values, validated with one-sentence errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from lmfusion_cli.common.configs import apply_overrides, build_config, config_hash, config_to_dict, parse_override
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.config import resolve_config


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Run:
    name: str = "run"
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    note: str | None = None
    compile: bool = False
    optim: Optim = field(default_factory=Optim)


def test_build_nested_and_defaults():
    cfg = build_config(Run, {"steps": 5, "optim": {"lr": 3e-4, "betas": [0.8, 0.9]}})
    assert cfg.steps == 5 and cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.mode == "a" and cfg.note is None


@pytest.mark.parametrize(
    "data, key",
    [
        ({"stepz": 1}, "'stepz'"),
        ({"optim": {"lrr": 1}}, "'optim.lrr'"),
        ({"steps": "ten"}, "'steps'"),
        ({"steps": True}, "'steps'"),
        ({"mode": "c"}, "'mode'"),
        ({"compile": "yes"}, "'compile'"),
        ({"optim": {"betas": [0.9]}}, "'optim.betas'"),
        ({"optim": 3}, "'optim'"),
    ],
)
def test_bad_keys_and_types_name_the_key(data, key):
    with pytest.raises(UserError) as err:
        build_config(Run, data)
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_post_init_value_error_becomes_user_error():
    with pytest.raises(UserError, match="optim.lr must be > 0"):
        build_config(Run, {"optim": {"lr": -1}})


def test_int_promotes_to_float_and_integral_float_to_int():
    cfg = build_config(Run, {"steps": 4.0, "optim": {"lr": 1}})
    assert cfg.steps == 4 and isinstance(cfg.optim.lr, float)


def test_overrides_parse_scientific_and_nested():
    assert parse_override("optim.lr=3e-4") == (["optim", "lr"], 3e-4)
    assert parse_override("name=hello") == (["name"], "hello")
    assert parse_override("optim.betas=[0.5, 0.6]") == (["optim", "betas"], [0.5, 0.6])
    data = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=2", "steps=3"])
    assert data == {"optim": {"lr": 2}, "steps": 3}
    with pytest.raises(UserError, match="key=value"):
        parse_override("nonsense")


def test_resolve_order_yaml_then_set_then_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nname: from-yaml\noptim:\n  lr: 0.5\n")
    cfg = resolve_config(Run, path, ["optim.lr=0.25", "name=from-set"], {"name": "from-cli", "steps": None})
    assert (cfg.steps, cfg.name, cfg.optim.lr) == (7, "from-cli", 0.25)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_config(Run, tmp_path / "nope.yaml", [], {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        resolve_config(Run, bad, [], {})


def test_hash_is_stable_and_sensitive():
    a, b = build_config(Run, {}), build_config(Run, {"steps": 11})
    assert config_hash(a) == config_hash(build_config(Run, {})) != config_hash(b)
    assert config_to_dict(a)["optim"]["betas"] == [0.9, 0.95]
