"""Every example printed by every `lmfusion ... --help` parses (issue 16): the docstring examples and the
`--set` example of each command go through Click's parser *and* the command's typed config (unknown
keys, bad values and bad types are refused there), stopping just before the stage would run."""

from __future__ import annotations

import re
import shlex

import pytest
import typer

import lmfusion_cli.config
from lmfusion_cli.cli import app, main

GROUP = typer.main.get_command(app)
NEEDS_NO_CONFIG = ("--verify",)  # `encode-latents --verify DIR` checks a cache without building a config


class _Parsed(Exception):
    def __init__(self, cfg):
        self.cfg = cfg


def _examples() -> list[tuple[str, list[str]]]:
    found = []
    for name, cmd in GROUP.commands.items():
        lines = [line.strip() for line in (cmd.help or "").splitlines() if line.strip().startswith("lmfusion ")]
        assert lines, f"`lmfusion {name} --help` shows no example"
        for line in lines:
            found.append((name, shlex.split(line)[1:]))
        for param in cmd.params:
            match = re.search(r"repeatable: (--set .*)\.$", getattr(param, "help", "") or "")
            if match:  # the --set example, appended to the command's first example
                found.append((name, shlex.split(lines[0])[1:] + shlex.split(match.group(1))))
    return found


EXAMPLES = _examples()


@pytest.mark.parametrize("name,args", EXAMPLES, ids=[" ".join(a) for _, a in EXAMPLES])
def test_help_example_parses_into_a_valid_config(name, args, monkeypatch, repo_root, capsys):
    monkeypatch.chdir(repo_root)  # the examples name configs under pipelines/
    cmd = GROUP.commands[name]
    cmd.make_context(name, list(args[1:]))  # Click: options and types
    if any(flag in args for flag in NEEDS_NO_CONFIG) or not any(p.name == "overrides" for p in cmd.params):
        return  # no typed config behind it (`export` takes plain options): Click's parse is the check
    real = lmfusion_cli.config.resolve_config

    def parse_only(*a, **k):
        raise _Parsed(real(*a, **k))

    monkeypatch.setattr(lmfusion_cli.config, "resolve_config", parse_only)
    with pytest.raises(_Parsed) as parsed:
        main(list(args))
    assert parsed.value.cfg is not None
    set_pairs = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    for pair in set_pairs:  # the --set key reached the config (no silent typo)
        key, value = pair.split("=", 1)
        node = parsed.value.cfg
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
            # AttributeError / KeyError here: the key is not in the config


def test_a_wrong_set_key_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--set", "train.steps=10", "--latents", "x", "--out", "y"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.steps" in err and err.count("\n") == 1


def test_every_command_is_covered():
    assert {n for n, _ in EXAMPLES} == set(GROUP.commands)
