"""`lmfusion sample` refuses options its task would ignore, and a decoding the task cannot use, up front:
one `error:` line, exit code 2, before the checkpoint is looked at (the checkpoint here does not exist)
and before anything is written."""

from __future__ import annotations

import pytest

from lmfusion_cli.cli import main


def _refused(capsys, tmp_path, *args) -> str:
    """Run `lmfusion sample` on a missing checkpoint; return its one error line (exit 2, no --out written)."""
    out = tmp_path / "out"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["sample", "--checkpoint", str(tmp_path / "no-such-run"), "--out", str(out), *map(str, args)])
    assert e.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not out.exists()
    assert "no-such-run" not in lines[0], "refused before the checkpoint is resolved"
    return lines[0]


@pytest.mark.parametrize(
    ("task", "option", "args"),
    [
        ("t2i", "--images", ["--prompt", "a red circle", "--images", "photos"]),
        ("interleaved", "--images", ["--prompt", "a story:", "--images", "photos"]),
        ("caption", "--prompt", ["--images", "photos", "--prompt", "a red circle"]),
        ("caption", "--prompts", ["--images", "photos", "--prompts", "prompts.txt"]),
    ],
)
def test_an_option_the_task_does_not_use_is_refused(capsys, tmp_path, task, option, args):
    line = _refused(capsys, tmp_path, "--task", task, *args)
    assert option in line and f"task {task}" in line


def test_interleaved_beam_is_refused_before_the_model_loads(capsys, tmp_path):
    line = _refused(capsys, tmp_path, "--task", "interleaved", "--prompt", "a story:", "--decoding", "beam")
    assert "beam" in line and "greedy or top-p" in line


def test_rerank_without_beam_search_is_refused_before_the_model_loads(capsys, tmp_path):
    line = _refused(capsys, tmp_path, "--task", "caption", "--images", "photos", "--rerank", "image")
    assert "rerank image" in line and "decoding to beam" in line
