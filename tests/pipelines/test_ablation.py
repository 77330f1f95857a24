"""`pipelines/ablation.sh` + `scripts/ablation_report.py` (issues 11, 23): the tables and plots come from real runs.

The end-to-end test runs the pipeline as shipped at a minimal size (quick-build assets, 2 steps, 2
evaluation items, 6 text items) for a frozen-text variant (lmfusion) and the Transfusion-style one, two
seeds each, then checks the results against the runs' own files (165 s at load ~4 on the 2-core machine,
mostly the start-up of the fourteen `lmfusion` processes: marked slow). The statistics (mean ± sd over
seeds, the 2-SE rule, the equal-FLOPs reading) are checked on made-up run folders in the pipeline's layout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import ablation_report as report  # noqa: E402
import ablation_stats as stats  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1)


def _pipeline_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LMFUSION=str(Path(sys.executable).parent / "lmfusion"), PY=sys.executable, **extra)
    return env


def _small_env(tmp: Path, **extra: str) -> dict[str, str]:
    return _pipeline_env(
        tmp,
        WORK=str(tmp / "work"),
        CONFIG=str(tmp / "config.yaml"),
        STEPS="2",
        NUM_ITEMS="48",
        RESOLUTION="32",
        EVAL_ITEMS="2",
        EVAL_STEPS="1",
        TEXT_ITEMS=str(tmp / "items.jsonl"),
        WORKERS="1",
        BASE=str(tmp / "assets/tiny-lm"),
        VAE=str(tmp / "assets/tiny-vae"),
        **extra,
    )


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """One minimal run of the whole pipeline: lmfusion (frozen text) and transfusion, seeds 0 and 1."""
    tmp = tmp_path_factory.mktemp("ablation")
    build = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_assets.py"), "--out", str(tmp / "assets"), "--quick"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    config = yaml.safe_load((REPO / "pipelines/configs/ablation/tiny.yaml").read_text())
    config["schedule"].update(warmup_steps=1)
    config["log"].update(every=1, val_every=1, val_items=2)
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    shipped = (REPO / "lmfusion_cli/evaluation/data/tiny_mc.jsonl").read_text().splitlines()
    (tmp / "items.jsonl").write_text("\n".join(shipped[:6]) + "\n")
    env = _small_env(
        tmp,
        VARIANTS="lmfusion transfusion",
        SEEDS=" ".join(map(str, SEEDS)),
        JOBS="2",
        RESULTS=str(tmp / "docs/results.md"),
        PLOT=str(tmp / "docs/ablation_loss.png"),
        NOTE="Run by the test.",
    )
    proc = subprocess.run(["bash", "pipelines/ablation.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc.stdout


def _row(text: str, section: str, name: str) -> list[str]:
    part = text.split(f"## {section}")[1].split("\n## ")[0]
    line = next(line for line in part.splitlines() if line.startswith(f"| {name} | "))
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.mark.slow
def test_pipeline_writes_the_tables_and_plots_from_its_runs(ablation):
    tmp, stdout = ablation
    work = tmp / "work"
    results = (tmp / "docs/results.md").read_text()
    for png in ("ablation_loss.png", "ablation_flops.png"):
        data = (tmp / "docs" / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
        assert f"]({png})" in results
    assert "Run by the test." in results and "seeds=0 1" in results
    for name in ("lmfusion", "transfusion"):
        runs = [work / name / f"seed-{s}" for s in SEEDS]
        ciders = [
            json.loads((r / "eval-shapes/metrics.json").read_text())["shapes"]["captioning"]["cider"] for r in runs
        ]
        row = _row(results, "Images", name)
        assert row[1] == "2" and row[2] == stats.stat(ciders).text(3)
        flops = []
        for r in runs:
            records = [json.loads(x) for x in (r / "run/logs/train.jsonl").read_text().splitlines()]
            flops.append(sum(x["flops"] for x in records if "event" not in x))
            assert all(float((r / f"{s}.cpu_s").read_text()) > 0 for s in ("run", "eval-shapes", "eval-text"))
        row = _row(results, "Text and cost", name)
        assert row[7] == f"{sum(flops) / len(flops) / 1e12:.2f} T" and min(flops) > 0
    # frozen text: bit-identical to the base in every seed; a model trained from scratch: not
    assert _row(results, "Text and cost", "lmfusion")[5] == "identical"
    assert _row(results, "Text and cost", "transfusion")[5] == "differs (2 of 2 runs)"
    assert "bit-identical to the base's in 2 of 2 runs — **agree**" in results
    # the transfusion mix: three quarters of the examples text-only, so a quarter of lmfusion's image examples
    config = yaml.safe_load((work / "transfusion/seed-1/run/config.yaml").read_text())
    assert config["data"]["text_only_fraction"] == 0.748 and config["train"]["seed"] == 1
    assert config["model"]["from_scratch"] is True and config["schedule"]["steps"] == 2
    images = {n: _row(results, "Text and cost", n)[6] for n in ("lmfusion", "transfusion")}
    assert images == {"lmfusion": f"{2 * 16 * 0.9:.0f}", "transfusion": f"{2 * 16 * (1 - 0.748):.0f}"}
    cpu = sum(float(p.read_text()) for p in work.glob("*/seed-*/*.cpu_s"))
    cpu += sum(float((work / f"{s}.cpu_s").read_text()) for s in ("shapes", "latents"))
    assert f"Cost: {cpu / 3600:.2f} CPU-hours in all" in results
    assert re.search(r"^  - caption CIDEr: lmfusion .* — \*\*(agree|disagree|within noise)\*\*$", results, re.M)


@pytest.mark.slow
def test_rerun_skips_every_finished_stage(ablation):
    tmp, _ = ablation
    env = _small_env(
        tmp, VARIANTS="lmfusion", SEEDS="1", RESULTS=str(tmp / "again/results.md"), PLOT=str(tmp / "again/loss.png")
    )
    proc = subprocess.run(["bash", "pipelines/ablation.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp / "work/lmfusion-seed1.log").read_text()
    assert log.count("is complete, skipped") == 3 and "prepare: " in proc.stdout
    assert "| lmfusion | 1 |" in (tmp / "again/results.md").read_text()


def test_unknown_variant_is_refused_before_any_work(tmp_path):
    env = _pipeline_env(tmp_path, WORK=str(tmp_path / "w"), VARIANTS="lmfusion densee")
    proc = subprocess.run(["bash", "pipelines/ablation.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown variant 'densee'" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_report_names_a_missing_run(tmp_path, capsys):
    assert (
        report.main(
            [
                "--work",
                str(tmp_path),
                "--variants",
                "lmfusion",
                "--results",
                str(tmp_path / "r.md"),
                "--plot",
                str(tmp_path / "p.png"),
            ]
        )
        == 2
    )
    assert re.search(
        r"lmfusion/seed-0/run/manifest.json is missing; run pipelines/ablation.sh", capsys.readouterr().err
    )


# ---- the statistics, on made-up run folders in the pipeline's layout -----------------------------------
CHANCE = {"background": 0.125, "colour": 0.14, "shape": 1 / 3}


def _fake_run(work: Path, variant: str, seed: int, cider: float, caption: float, generation: float, **kw) -> None:
    """WORK/VARIANT/seed-SEED with every file `load_run` reads; the figures are the arguments."""
    from safetensors.torch import save_file
    from torch import zeros

    folder = work / variant / f"seed-{seed}"
    run, steps = folder / "run", kw.get("steps", 10)
    model = {"freeze_text": kw.get("freeze_text", True), "from_scratch": kw.get("from_scratch", False)}
    (run / "logs").mkdir(parents=True)
    (run / "manifest.json").write_text(
        json.dumps({"complete": True, "step": steps, "trains": {"lmfusion_config": model}})
    )
    config = {
        "base": {"path": "tiny"},
        "train": {"batch_size": 16, "seed": seed},
        "optim": {"lr": 2e-3},
        "schedule": {"steps": steps, "warmup_steps": 1, "min_lr": 1e-4},
        "data": {"generation_fraction": 0.3, "caption_dropout": 0.1, "text_only_fraction": kw.get("text_only", 0.1)},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    record = {"step": steps, "image_loss": 1.0, "text_loss": 2.0, "flops": kw.get("flops", 1e12), "cpu_s": 5.0}
    (run / "logs/train.jsonl").write_text(json.dumps(record) + "\n")
    weights = run / f"checkpoints/step-{steps:08d}/model"
    weights.mkdir(parents=True)
    save_file({"w": zeros(kw.get("params", 1000))}, str(weights / "model.safetensors"))
    for stage, seconds in (("run", 10.0), ("eval-shapes", 2.0), ("eval-text", 1.0)):
        (folder / f"{stage}.cpu_s").write_text(f"{seconds}\n")
        (folder / f"{stage}.wall_s").write_text(f"{int(seconds)}\n")
    (folder / "eval-shapes").mkdir()
    shapes = {
        "num_items": 100,
        "captioning": {"cider": cider, "accuracy": dict.fromkeys(CHANCE, caption)},
        "generation": {"accuracy": dict.fromkeys(CHANCE, generation), "chance": CHANCE},
    }
    (folder / "eval-shapes/metrics.json").write_text(json.dumps({"shapes": shapes}))
    (folder / "eval-text/text").mkdir(parents=True)
    models = {"fused": {"accuracy": kw.get("text", 0.5)}, "base": {"accuracy": 0.5}}
    text = {"identical": kw.get("identical", True), "models": models}
    (folder / "eval-text/metrics.json").write_text(json.dumps({"text": text}))
    for who in ("base", "fused"):
        (folder / f"eval-text/text/per_item_{who}.jsonl").write_text("")


def _fake_runs(work: Path, variant: str, ciders, captions, generations, **kw) -> None:
    for seed, (c, a, g) in enumerate(zip(ciders, captions, generations)):
        _fake_run(work, variant, seed, c, a, g, **kw)


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_two_standard_errors_decide_each_claim(tmp_path):
    work = tmp_path / "work"
    _fake_runs(work, "lmfusion", [1.0, 1.1, 1.2], [0.80, 0.82, 0.84], [0.5, 0.6, 0.7])
    # deep vs dense: the same spread, 0.1 apart: beyond 2·SE = 2·sqrt(2·0.02²/3) = 0.033
    _fake_runs(work, "dense", [0.5, 0.6, 0.7], [0.70, 0.72, 0.74], [0.5, 0.6, 0.7], freeze_text=False, text=0.4)
    # deep vs shallow: ffn-only's seeds spread 0.1: 2·SE = 2·sqrt((0.1² + 0.02²)/3) = 0.118 > 0.02 apart
    _fake_runs(work, "ffn-only", [1.3, 1.4, 1.5], [0.72, 0.82, 0.92], [0.5, 0.6, 0.7])
    groups = report.load_groups(work, ["lmfusion", "ffn-only", "dense"], [0, 1, 2])
    text = "\n".join(stats.claims(groups))
    deep_dense = text.split("deep separation beats a dense")[1]
    assert (
        _line(deep_dense, "  - caption attribute accuracy")
        == "  - caption attribute accuracy: lmfusion 0.820 ± 0.020 vs dense 0.720 ± 0.020 (n 3/3; difference "
        "+0.100, 2·SE 0.033) — **agree**"
    )
    assert _line(deep_dense, "  - generation accuracy").endswith(
        "(n 3/3; difference +0.000, 2·SE 0.163) — **within noise**"
    )
    deep_shallow = text.split("beats shallow (FFN only)")[1]
    assert _line(deep_shallow, "  - caption attribute accuracy").endswith(
        "lmfusion 0.820 ± 0.020 vs ffn-only 0.820 ± 0.100 (n 3/3; difference +0.000, 2·SE 0.118) — **within noise**"
    )
    # CIDEr 1.1 ± 0.1 against 1.4 ± 0.1: 0.3 apart, 2·SE 0.163, the other way round
    assert _line(deep_shallow, "  - caption CIDEr").endswith("— **disagree**")
    assert "shallow separation beats a dense, shared model" in text
    assert "bit-identical to the base's in 6 of 6 runs — **agree**" in text
    assert _line(text, "  - dense text accuracy").endswith("(n 3/3; difference -0.100, 2·SE 0.000) — **agree**")


def test_one_seed_has_no_error_bar_and_decides_nothing():
    a, b = stats.stat([0.9]), stats.stat([0.1, 0.2])
    assert stats.judge(a.mean - b.mean, a.var_of_mean, b.var_of_mean)[0] == 0
    assert a.text() == "0.900" and b.text() == "0.150 ± 0.071"
    # two seeds each with no spread: any difference counts
    assert stats.judge(0.01, stats.stat([1, 1]).var_of_mean, stats.stat([2, 2]).var_of_mean) == (1, 0.0)


def test_transfusion_is_read_off_at_lmfusions_flops(tmp_path):
    work = tmp_path / "work"
    _fake_runs(work, "lmfusion", [1.8, 1.9, 2.0], [0.8] * 3, [0.6] * 3, flops=2e12)
    scratch = dict(freeze_text=False, from_scratch=True, identical=False, text_only=0.75)
    _fake_runs(work, "transfusion", [0.9, 1.0, 1.1], [0.5] * 3, [0.6] * 3, flops=1e12, **scratch)
    _fake_runs(work, "transfusion-2x", [1.9, 2.0, 2.1], [0.7] * 3, [0.6] * 3, flops=4e12, steps=20, **scratch)
    groups = report.load_groups(work, ["lmfusion", "transfusion", "transfusion-2x"], [0, 1, 2])
    text = "\n".join(stats.claims(groups))
    # 2 T lies halfway between 1 T and 4 T in log FLOPs: CIDEr (1.0 + 2.0) / 2, variance (0.1²/3)/4 · 2
    assert (
        "  - caption CIDEr: lmfusion 1.900 ± 0.100 vs Transfusion at 2.00 T FLOPs 1.500 (interpolated, weight 0.50 "
        "on the cheaper run; difference +0.400, 2·SE 0.141) — **agree**" in text
    )
    assert "transfusion-2x: 2× the steps, 0.56× LMFusion's image examples, 2.00× its training FLOPs" in text
    assert "transfusion: equal steps, 0.28× LMFusion's image examples, 0.50× its training FLOPs" in text
    # without transfusion-2x, 2 T is outside Transfusion's range: the nearest run, said so
    del groups["transfusion-2x"]
    assert "outside Transfusion's FLOPs range: its run at 1.00 T, not interpolated" in "\n".join(stats.claims(groups))


def test_report_writes_tables_claims_and_figures_from_the_folders(tmp_path):
    work = tmp_path / "work"
    _fake_runs(work, "lmfusion", [1.0, 1.2], [0.8, 0.9], [0.5, 0.7], flops=2e12, params=2_500_000)
    _fake_runs(work, "random-init", [1.1, 1.3], [0.7, 0.8], [0.6, 0.6], flops=2e12, params=2_500_000)
    (work / "shapes.cpu_s").write_text("30\n")
    (work / "latents.cpu_s").write_text("60\n")
    (work / "invocations.wall_s").write_text("2026-01-01T00:00:00Z 1800\n2026-01-01T01:00:00Z 1800\n")
    out = tmp_path / "docs"
    args = ["--work", str(work), "--variants", "lmfusion", "random-init", "--seeds", "0", "1"]
    assert report.main(args + ["--results", str(out / "r.md"), "--plot", str(out / "loss.png")]) == 0
    results = (out / "r.md").read_text()
    assert (out / "ablation_flops.png").read_bytes().startswith(PNG) and "](ablation_flops.png)" in results
    assert _row(results, "Images", "lmfusion")[:3] == ["lmfusion", "2", "1.100 ± 0.141"]
    assert _row(results, "Text and cost", "random-init")[2] == "2.50 M"
    # 2 variants × 2 seeds × (10 + 2 + 1) CPU-s + 90 s of data stages; 2 × 1800 s elapsed
    assert (
        "Cost: 0.04 CPU-hours in all (data 1.5 CPU-min" in results and "1.00 h elapsed over 2 invocation(s)" in results
    )
    assert "(n 2/2; difference -0.100, 2·SE 0.283; lmfusion higher in 0 of 2 seeds) — **within noise**" in results
    for line in results.split("## Does it agree with the paper?")[1].split("\n## ")[0].splitlines():
        if line.startswith("  - "):
            assert re.search(r"— \*\*(agree|disagree|within noise)\*\*$", line), line


def test_attributes_below_chance_in_every_variant_are_named(tmp_path):
    work = tmp_path / "work"
    for name, gen in (("lmfusion", 0.2), ("dense", 0.25)):
        _fake_runs(work, name, [1.0, 1.0], [0.5, 0.5], [gen, gen])
    groups = report.load_groups(work, ["lmfusion", "dense"], [0, 1])
    assert stats.chance_lines(list(groups.values())) == [
        "- Generation above the checker's chance level in every variant (seed means): background, colour.",
        "- Generation *below* chance in every variant (seed means): shape — the checker does not recognise these "
        "attributes in the generated images yet, so they do not separate the variants.",
    ]


def test_ablation_config_is_the_demo_recipe():
    """The ablation trains on pipelines/configs/tiny.yaml's recipe; only batch, steps and saving differ, and
    the position table, pinned to the one docs/results.md was made with (and said so there)."""
    demo = yaml.safe_load((REPO / "pipelines/configs/tiny.yaml").read_text())
    ablation = yaml.safe_load((REPO / "pipelines/configs/ablation/tiny.yaml").read_text())
    pinned = {"image_position": "learned"}
    assert {k: v for k, v in ablation["model"].items() if k not in pinned} == {
        k: v for k, v in demo["model"].items() if k not in pinned
    }
    assert {k: ablation["model"][k] for k in pinned} == pinned and ablation["optim"] == demo["optim"]
    assert "image_position: learned" in (REPO / "docs/results.md").read_text()
    assert {k: v for k, v in ablation["data"].items() if k != "latents"} == {
        k: v for k, v in demo["data"].items() if k != "latents"
    }
    assert ablation["base"] == demo["base"] and ablation["schedule"]["min_lr"] == demo["schedule"]["min_lr"]
    assert (ablation["train"]["batch_size"], ablation["train"]["threads"], ablation["schedule"]["steps"]) == (
        16,
        1,
        400,
    )


def test_transfusion_fraction_gives_half_the_tokens_to_text():
    import ablation_token_mix as mix

    # the lengths measured on the tiny config (pipelines/ablation.sh's comment) give its defaults
    means = {"text-only": 27.64, "interleaved": 93.63, "caption/image": 78.96}
    out = mix.fractions(means, text_only0=0.1, interleaved0=0.2, share=0.5)
    assert round(out["text_only_fraction"], 3) == 0.748 and round(out["interleaved_fraction"], 3) == 0.056
    t = out["text_only_fraction"]
    text_tokens = t * means["text-only"]
    image_tokens = out["interleaved_fraction"] * means["interleaved"]
    image_tokens += (1 - t - out["interleaved_fraction"]) * means["caption/image"]
    assert abs(text_tokens / (text_tokens + image_tokens) - 0.5) < 1e-9
    script = (REPO / "pipelines/ablation.sh").read_text()
    assert "TF_TEXT_ONLY=${TF_TEXT_ONLY:-0.748}" in script and "TF_INTERLEAVED=${TF_INTERLEAVED:-0.056}" in script


def test_a_shapes_set_without_documents_is_refused(tmp_path):
    """A WORK from before issue 23 (prepared without --interleaved) would silently drop the interleaved share."""
    (tmp_path / "w/shapes").mkdir(parents=True)
    (tmp_path / "w/shapes/manifest.json").write_text(json.dumps({"complete": True, "config": {"interleaved": False}}))
    env = _pipeline_env(tmp_path, WORK=str(tmp_path / "w"), VARIANTS="lmfusion")
    proc = subprocess.run(["bash", "pipelines/ablation.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "shapes was prepared without --interleaved" in proc.stderr
    assert not (tmp_path / "w/latents").exists()
