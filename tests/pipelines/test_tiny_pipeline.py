"""`pipelines/tiny.sh` (what `make demo` runs), end to end at minimal sizes: every stage's artifact is
there and valid, the summary names the reports, and a rerun skips every stage (issue 10).

Sizes: 48 shapes items, 2 training steps, 2 prompts × 1 denoising step, 2 held-out items, 6 text items,
on the shipped tiny LM and VAE: ~70 s on the quiet 2-core machine, mostly the start-up of seven
`lmfusion` processes (marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
STAGES = ("shapes", "latents", "run", "samples", "eval-shapes", "eval-text", "samples-shipped", "eval-shapes-shipped")


def _env(tmp: Path) -> dict[str, str]:
    shipped = (REPO / "lmfusion_cli/evaluation/data/tiny_mc.jsonl").read_text().splitlines()
    (tmp / "items.jsonl").write_text("\n".join(shipped[:6]) + "\n")
    (tmp / "prompts.txt").write_text("a red circle on a blue background\na small green square on a white background\n")
    env = dict(os.environ)
    env.update(
        LMFUSION=str(Path(sys.executable).parent / "lmfusion"),
        PY=sys.executable,
        WORK=str(tmp / "work"),
        NUM_ITEMS="48",
        STEPS="2",
        SAMPLE_STEPS="1",
        EVAL_ITEMS="2",
        EVAL_STEPS="1",
        WORKERS="1",
        PROMPTS=str(tmp / "prompts.txt"),
        TEXT_ITEMS=str(tmp / "items.jsonl"),
        LMFUSION_QUIET="1",
    )
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    env = _env(tmp)
    proc = subprocess.run(["bash", "pipelines/tiny.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "work", proc.stdout, env


def _complete(folder: Path) -> bool:
    return json.loads((folder / "manifest.json").read_text()).get("complete") is True


@pytest.mark.slow
def test_every_stage_leaves_a_complete_valid_artifact(demo):
    work, stdout, _ = demo
    for name in STAGES:
        assert _complete(work / name), name
        assert int((work / f"{name}.wall_s").read_text()) >= 0
    assert list((work / "run" / "checkpoints").glob("step-00000002"))
    samples = [json.loads(line) for line in (work / "samples" / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == [
        "a red circle on a blue background",
        "a small green square on a white background",
    ]
    pngs = sorted((work / "samples").rglob("*.png"))
    assert len(pngs) == 3  # two samples and the grid
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
    shapes = json.loads((work / "eval-shapes" / "metrics.json").read_text())["shapes"]
    assert shapes["num_items"] == 2
    assert 0 <= shapes["generation"]["accuracy"]["background"] <= 1
    assert shapes["generation"]["chance"]["background"] == pytest.approx(1 / 8)
    assert shapes["captioning"]["cider"] >= 0
    report = (work / "eval-shapes" / "report.md").read_text()
    for target in [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]:
        assert (work / "eval-shapes" / target).is_file(), target
    text = json.loads((work / "eval-text" / "metrics.json").read_text())["text"]
    assert text["num_items"] == 6 and text["identical"] is True
    assert text["models"]["fused"]["accuracy"] == text["models"]["base"]["accuracy"]


@pytest.mark.slow
def test_summary_names_the_grid_reports_and_figures(demo):
    work, stdout, _ = demo
    assert f"image grid:    {work / 'samples' / 'grid.png'}" in stdout
    assert f"report:        {work / 'eval-shapes' / 'report.md'}" in stdout
    assert f"report:        {work / 'eval-text' / 'report.md'}" in stdout
    assert "eval-shapes: shapes.generation.accuracy.background = " in stdout
    assert "stage wall times" in stdout
    # the shipped checkpoint is evaluated beside the fresh run, and each figure says which it is (issue 23)
    fresh = "[fresh run (trained by this demo, 2 steps; CFG 3)]"
    shipped = "[shipped checkpoint (lmfusion_cli/assets/tiny-lmfusion, 51000 steps, make tiny-lmfusion; CFG 2)]"
    assert f"image grid:    {work / 'samples' / 'grid.png'}   {fresh}" in stdout
    assert f"image grid:    {work / 'samples-shipped' / 'grid.png'}   {shipped}" in stdout
    assert f"report:        {work / 'eval-shapes-shipped' / 'report.md'}   {shipped}" in stdout
    assert "eval-shapes-shipped: shapes.captioning.accuracy.background = " in stdout
    assert stdout.index(shipped[1:-1] + ":") > stdout.index(fresh[1:-1] + ":")
    # each at its own guidance scale (SHIPPED_CFG_SCALE: the longer-trained checkpoint needs less)
    scales = [
        yaml.safe_load((work / name / "config.yaml").read_text())["sampling"]["cfg_scale"]
        for name in ("eval-shapes", "eval-shapes-shipped")
    ]
    assert scales == [[3.0], [2.0]]


@pytest.mark.slow
def test_shipped_checkpoint_can_be_left_out(demo, tmp_path):
    """SHIPPED="" leaves the shipped checkpoint's stages out; with STEPS unset the fresh run's label reads its
    steps off the run. On a copy of the demo's fresh stages (all complete, so all skipped: a few seconds)."""
    import shutil

    work, _, env = demo
    for name in STAGES[:6]:
        shutil.copytree(work / name, tmp_path / "work" / name, symlinks=True)
        shutil.copy(work / f"{name}.wall_s", tmp_path / "work" / f"{name}.wall_s")
    env = dict(env, WORK=str(tmp_path / "work"), SHIPPED="", STEPS="")
    proc = subprocess.run(["bash", "pipelines/tiny.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("is complete, skipped") == 6
    assert "shipped checkpoint" not in proc.stdout and "samples-shipped" not in proc.stdout
    assert "[fresh run (trained by this demo, 2 steps; CFG 3)]" in proc.stdout
    assert not (tmp_path / "work" / "eval-shapes-shipped").exists()


@pytest.mark.slow
def test_rerun_skips_every_stage(demo):
    work, _, env = demo
    proc = subprocess.run(["bash", "pipelines/tiny.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("is complete, skipped") == len(STAGES)
    assert "lmfusion demo finished" in proc.stdout


@pytest.mark.slow
def test_shipped_checkpoint_build_at_minimal_sizes(tmp_path):
    """`make tiny-lmfusion` (pipelines/tiny_lmfusion.sh) end to end: a loadable export + its build record."""
    from lmfusion_cli.assets import TINY_LM, TINY_VAE
    from lmfusion_cli.sampling.loading import load_for_sampling

    (tmp_path / "tiny-lm").symlink_to(TINY_LM)  # the export names its base and VAE by relative path
    (tmp_path / "tiny-vae").symlink_to(TINY_VAE)
    env = _env(tmp_path)
    # three cycles: 2 steps, then 1 more from their weights (train.init_from) at CYCLE2_LR, then 1 more,
    # generation-heavy (CYCLE3_ARGS' default)
    env.update(STEPS="2", CYCLE2_STEPS="1", CYCLE3_STEPS="1", NUM_ITEMS="24", SAVE_EVERY="1")
    env.update(OUT=str(tmp_path / "tiny-lmfusion"), WORK=str(tmp_path / "build"))
    proc = subprocess.run(
        ["bash", "pipelines/tiny_lmfusion.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "shipped checkpoint" not in proc.stdout  # the build does not evaluate the old shipped one
    build_dir = tmp_path / "build"
    assert proc.stdout.count("== prepare\n") == 1 and not (build_dir / "cycle1" / "shapes").exists()
    assert proc.stdout.count("== evaluate-text\n") == 1  # the last cycle's only
    build = json.loads((tmp_path / "tiny-lmfusion" / "build.json").read_text())
    assert build["steps"] == 4 and build["train_threads"] == 1 and build["stages"]["run"]["cpu_s"] > 0
    first, second, third = build["cycles"]
    assert [c["steps"] for c in build["cycles"]] == [2, 1, 1]
    assert (second["lr"], third["lr"], second["init_from"], third["init_from"]) == (1e-3, 1e-3, "cycle 1", "cycle 2")
    assert (first["args"], second["args"], third["args"]) == ([], [], ["--set", "data.generation_fraction=0.7"])
    total = sum(c["run"]["cpu_s"] for c in build["cycles"])
    assert build["stages"]["run"]["cpu_s"] == pytest.approx(total)
    assert 0 <= first["shapes"]["generation"]["background"] <= 1 and "shapes" not in third
    assert 0 <= second["shapes"]["captioning"]["background"] <= 1
    assert 0 <= build["shapes"]["captioning"]["accuracy"]["background"] <= 1
    configs = [yaml.safe_load((d / "run" / "config.yaml").read_text()) for d in (build_dir / "cycle2", build_dir)]
    assert [c["train"]["init_from"] for c in configs] == [
        str(build_dir / "cycle1" / "run"),
        str(build_dir / "cycle2" / "run"),
    ]
    assert [c["optim"]["lr"] for c in configs] == [1e-3, 1e-3]
    assert [c["data"]["generation_fraction"] for c in configs] == [0.3, 0.7]  # tiny.yaml's, then cycle 3's
    loaded = load_for_sampling(tmp_path / "tiny-lmfusion")
    assert loaded.model.base_id == str(tmp_path / "tiny-lm") and loaded.checkpoint.step is None
    export = json.loads((tmp_path / "tiny-lmfusion" / "lmfusion_export.json").read_text())
    assert export["source"]["step"] == 1 and export["vae"]["id"] == "../tiny-vae"
    # the shipped recipe: tiny.yaml (DiT's fixed 2-D position table) with no further train args
    assert loaded.model.config.image_position == "sincos"
    assert build["train_args"] == []


_BLOCK_IMPORTS = """import sys
class _Block:  # the device image has none of these; the GPU script's stages must not import them
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"lm_eval", "datasets", "open_clip", "cleanfid", "evaluate"}:
            raise ImportError(f"not on the device machine: {name}")
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.slow
def test_gpu_shape_scale_script_runs_without_lm_eval(tmp_path):
    """scripts/gpu_shape_scale.sh (issue 23's GPU run) end to end on the CPU at minimal sizes, with the packages
    the device image lacks made unimportable: the build, a learning curve over every saved step, an export."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(_BLOCK_IMPORTS)
    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\nPYTHONPATH={block}:$PYTHONPATH exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = _env(tmp_path)  # the demo's minimal sizes; the script runs its own `lmfusion` through PYTHON
    env.update(PYTHON=str(python), OUT=str(tmp_path / "out"), SITE=str(tmp_path / "site"), BATCH="2", STEPS="2")
    env.update(SAVE_EVERY="1", NUM_ITEMS="24")
    proc = subprocess.run(
        ["bash", "scripts/gpu_shape_scale.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(  # a device call returns at most 8 files
        ["curve.json", "curve.md", "evals.tar", "log", "tiny-lmfusion.tar", "train.jsonl"]
    )
    curve = json.loads((out / "curve.json").read_text())
    assert [row["step"] for row in curve] == [1, 2]
    assert all(0 <= row["generation"]["shape"] <= 1 for row in curve)
    assert (out / "curve.md").read_text().startswith("| step | gen background")
    with tarfile.open(out / "evals.tar") as tar:
        names = tar.getnames()
    assert {"evals/eval-1/metrics.json", "evals/eval-2/metrics.json", "evals/eval-2/report.md"} <= set(names)
    with tarfile.open(out / "tiny-lmfusion.tar") as tar:
        build = json.load(tar.extractfile("tiny-lmfusion/build.json"))
        model_config = json.load(tar.extractfile("tiny-lmfusion/lmfusion_model.json"))
        assert "tiny-lmfusion/lmfusion_model.json" in tar.getnames()
    assert build["steps"] == 2 and build["stages"]["eval-text"]["wall_s"] is None  # TEXT_EVAL=0: no lm-eval there
    assert "model.image_position=sincos" not in build["train_args"]  # tiny.yaml's own table by default
    assert model_config["lmfusion_config"]["image_position"] == "sincos"
    assert not (tmp_path / "work" / "build" / "eval-text").exists()
    assert "steps 2 of 2 (4 examples)" in (out / "log").read_text()
