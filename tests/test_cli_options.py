"""CLI options come from the config dataclasses (issue 21): a field's docstring is its flag's help and its
`--set` key's listing in `--help`; adding a field touches no second file; bad keys and values are one
`error:` line, exit 2, before anything is written."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import pytest
import typer
from typer.testing import CliRunner

from lmfusion_cli.cli import app, main
from lmfusion_cli.commands.common import ConfigRequest, Flag, config_command
from lmfusion_cli.common.configs import config_fields
from lmfusion_cli.sampling.config import SampleConfig


@dataclass(frozen=True)
class KnobSection:
    depth: int = 2
    """How deep the knob goes, in turns."""


@dataclass(frozen=True)
class ExtendedSample(SampleConfig):
    """`SampleConfig` plus two fields declared only here, as a new field would be."""

    new_knob: float = 0.25
    """A brand-new option, in knob units (0 = off)."""
    knobs: KnobSection = field(default_factory=KnobSection)
    """A brand-new section."""


def _app(cls, flags):
    seen = {}

    @config_command(cls, flags, set_example="--set new_knob=1")
    def command(request: ConfigRequest) -> None:
        """A test command.

        Examples:

          lmfusion demo --set new_knob=1
        """
        seen["cfg"] = request.resolve()

    test_app = typer.Typer(rich_markup_mode=None)
    test_app.command("demo", epilog=command.epilog)(command)
    test_app.command("other")(lambda: None)  # two commands: `demo` stays a subcommand
    return test_app, seen


def _help(test_app, *args) -> str:
    result = CliRunner().invoke(test_app, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_a_new_field_becomes_a_flag_with_its_docstring_as_help():
    test_app, seen = _app(ExtendedSample, ("checkpoint", "out", "prompt", "new_knob"))
    text = _help(test_app, "demo")
    assert "--new-knob" in text and "A brand-new option, in knob units (0 = off). [new_knob, default 0.25]" in text
    result = CliRunner().invoke(
        test_app, ["demo", "--checkpoint", "c", "--out", "o", "--prompt", "p", "--new-knob", "3"]
    )
    assert result.exit_code == 0, result.output
    assert seen["cfg"].new_knob == 3.0 and isinstance(seen["cfg"], ExtendedSample)


def test_a_new_field_without_a_flag_is_a_listed_set_key():
    test_app, seen = _app(ExtendedSample, ("checkpoint", "out", "prompt"))
    text = _help(test_app, "demo")
    assert "--new-knob" not in text
    assert "new_knob = 0.25 <float> A brand-new option, in knob units (0 = off)." in text
    assert "knobs.depth = 2 <int> How deep the knob goes, in turns." in text
    args = ["demo", "--checkpoint", "c", "--out", "o", "--prompt", "p", "--set", "knobs.depth=5"]
    result = CliRunner().invoke(test_app, [*args, "--set", "new_knob=1"])
    assert result.exit_code == 0, result.output
    assert (seen["cfg"].knobs.depth, seen["cfg"].new_knob) == (5, 1.0)


def test_a_flag_must_name_a_field():
    with pytest.raises(KeyError, match="no_such_field"):
        config_command(SampleConfig, ("no_such_field",), set_example="")


@pytest.mark.parametrize("name", ["prepare", "encode-latents", "train", "plan", "sample", "evaluate"])
def test_every_config_key_is_in_help_with_its_docstring(name):
    cmd = typer.main.get_command(app).commands[name]
    text = _help(app, name)
    keys = re.findall(r"^  (\S+)(?: = .*?)?  <", cmd.epilog, flags=re.M)
    assert keys, cmd.epilog
    for f in config_fields(_config_of(name)):
        assert f.key in keys, f.key
        assert f.doc[:60] in text, (f.key, f.doc)


def test_an_empty_list_default_is_listed_as_brackets():
    """`images = ` read as a missing default; an empty list is `[]`, the same as in a YAML config."""
    epilog = typer.main.get_command(app).commands["sample"].epilog
    assert any(line.startswith("  images = []  <list of str>") for line in epilog.splitlines()), epilog


def _config_of(name):
    from lmfusion_cli.data.config import EncodeConfig, PrepareConfig
    from lmfusion_cli.evaluation.config import EvaluateConfig
    from lmfusion_cli.training.config import TrainRunConfig

    return {
        "prepare": PrepareConfig,
        "encode-latents": EncodeConfig,
        "train": TrainRunConfig,
        "plan": TrainRunConfig,
        "sample": SampleConfig,
        "evaluate": EvaluateConfig,
    }[name]


def test_flag_help_is_the_field_docstring():
    """`--steps` of train says what `schedule.steps` says (they used to differ)."""
    from lmfusion_cli.common.configs import field_docs
    from lmfusion_cli.training.config import ScheduleConfig

    text = _help(app, "train")
    assert f"--steps <int> {field_docs(ScheduleConfig)['steps']} [schedule.steps, default 1000]" in text


def _one_error_line(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.objective=v", "'model.objective' must be one of 'ddpm-eps' | 'flow'"),
        ("model.patch_size=3", "patch_size must be a power of two"),
        ("model.objectiv=flow", "did you mean 'model.objective'?"),
        ("train.steps=10", "did you mean 'schedule.steps'?"),
    ],
)
def test_bad_model_or_key_is_refused_before_the_run_folder_exists(override, needle, tmp_path, capsys):
    run = tmp_path / "run"
    err = _one_error_line(capsys, "train", "--latents", tmp_path / "no-cache", "--out", run, "--set", override)
    assert needle in err and not run.exists()


def test_bad_model_value_in_the_yaml_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  experts: moe\n")
    run = tmp_path / "run"
    err = _one_error_line(capsys, "train", "-c", config, "--latents", tmp_path / "no-cache", "--out", run)
    assert "model.experts" in err and not run.exists()


def _resolved_config(monkeypatch, argv: list[str]):
    """The config the command line resolves to (the command stops right after resolving it)."""
    import lmfusion_cli.config

    seen = {}
    real = lmfusion_cli.config.resolve_config

    def keep(*a, **k):
        seen["cfg"] = real(*a, **k)
        raise SystemExit(0)

    with monkeypatch.context() as patch:  # undone on return, so the helper can be called again
        patch.setattr(lmfusion_cli.config, "resolve_config", keep)
        with pytest.raises(SystemExit):
            main(argv)
    return seen["cfg"]


def test_csv_flags_parse_numbers_and_words(monkeypatch):
    cfg = _resolved_config(
        monkeypatch,
        ["evaluate", "--checkpoint", "c", "--out", "o", "--suite", "coco", "--coco-root", "r"]
        + ["--cfg-scale", "1.0,1.55", "--tasks", "hellaswag,my_task.yaml"],
    )
    assert cfg.sampling.cfg_scale == (1.0, 1.55) and cfg.text.tasks == ("hellaswag", "my_task.yaml")
    assert dataclasses.is_dataclass(cfg) and Flag("sampling.cfg_scale", csv=True).name == "--cfg-scale"


def test_csv_items_of_a_list_of_str_stay_strings(monkeypatch):
    """Task names like `yes`, `off` or `null` are YAML booleans / None: for `text.tasks` they stay names."""
    argv = ["evaluate", "--checkpoint", "c", "--out", "o", "--suite", "text", "--tasks", "yes,off,null,1.5,piqa"]
    assert _resolved_config(monkeypatch, argv).text.tasks == ("yes", "off", "null", "1.5", "piqa")


@pytest.mark.parametrize("section", ["schedule:\n", "schedule: 5\n"])
def test_a_flag_into_an_empty_or_scalar_yaml_section_is_handled_like_set(section, tmp_path, capsys, monkeypatch):
    """`--steps` and `--set schedule.steps=` write the same key: an empty (null) section takes either, a
    scalar where a section belongs is one `error:` line for both (it was a TypeError traceback for the flag)."""
    config = tmp_path / "c.yaml"
    config.write_text(section)
    run = tmp_path / "run"
    args = ["train", "-c", config, "--latents", tmp_path / "no-cache", "--out", run]
    if section == "schedule: 5\n":
        for given in (["--steps", "7"], ["--set", "schedule.steps=7"]):
            assert "'schedule' is not a section" in _one_error_line(capsys, *args, *given)
        assert not run.exists()
        return
    for given in (["--steps", "7"], ["--set", "schedule.steps=7"]):
        assert _resolved_config(monkeypatch, [str(a) for a in [*args, *given]]).schedule.steps == 7
