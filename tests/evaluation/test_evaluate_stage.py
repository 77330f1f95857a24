"""`lmfusion evaluate` end to end on a fake run (tiny random model built in the test): the suites through
the CLI, resume, base == fused on text, the COCO suite with stand-in weights, and one-sentence errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_run import build_fake_run, make_fused, make_tokenizer
from PIL import Image
from stand_ins import make_coco_fixture, save_tiny_clip, save_tiny_inception

from lmfusion_cli.cli import main
from lmfusion_cli.common.configs import build_config
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.evaluation.config import EvaluateConfig
from lmfusion_cli.evaluation.stage import run_evaluate

torch.set_num_threads(1)

FAST = ["--steps", 2, "--max-new-tokens", 4, "--batch-size", 4, "--ptb-tokenizer", "python"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_fake_run(tmp_path_factory.mktemp("fake-run"))


def _cli(*args) -> int:
    try:
        main(["evaluate", *map(str, args)])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _valid_png(path: Path) -> bool:
    with Image.open(path) as im:
        im.verify()
    return True


def _report_images(out: Path) -> list[str]:
    text = (out / "report.md").read_text()
    return [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]


def _small_mc_file(path: Path) -> Path:
    rows = [
        {"id": f"q{i}", "context": f"a {c} circle on a", "choices": ["blue background", "square", "left"], "label": 0}
        for i, c in enumerate(["red", "green", "yellow", "black", "white"])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_checking_the_config_imports_no_torch():
    """The sampling settings come from `sampling/config.py`, which imports nothing heavy (issue 21)."""
    code = (
        "import sys; from lmfusion_cli.common.configs import build_config; "
        "from lmfusion_cli.evaluation.config import EvaluateConfig; "
        "from lmfusion_cli.sampling.config import SampleConfig; "
        "build_config(EvaluateConfig, {'checkpoint': 'c', 'out': 'o', 'sampling': {'sampler': 'euler'}}); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_config_defaults_and_checks():
    cfg = build_config(EvaluateConfig, {"checkpoint": "c", "out": "o"})
    assert cfg.suite == "all" and cfg.suites() == ["text", "shapes"]
    with_coco = build_config(EvaluateConfig, {"checkpoint": "c", "out": "o", "coco": {"root": "r"}})
    assert with_coco.suites() == ["text", "shapes", "coco"]
    assert cfg.sampling.scales_for("coco") == (1.0, 1.55) and cfg.sampling.scales_for("shapes") == (
        1.55,
    )  # LMFusion Table 1
    assert (cfg.coco.clip_arch, cfg.coco.clip_pretrained, cfg.coco.num_prompts) == ("ViT-L-14", "openai", 30_000)
    bad = [
        ({"suite": "coco"}, "--coco-root"),
        ({"suite": "images"}, "suite"),
        ({"sampling": {"sampler": "heun"}}, "sampler"),
        ({"sampling": {"decoding": "sample"}}, "decoding"),
        ({"coco": {"caption_metrics": ["spice"]}}, "caption_metrics"),
        ({"shapes": {"num_items": 0}}, "num_items"),
        ({"device": "tpu"}, "device"),
        ({"batch_size": 0}, "batch_size"),
        ({"sampling": {"cfg_scale": [1.0, 1.0]}}, "cfg_scale"),
        ({"sampling": {"cfg_scale": [-1]}}, "cfg_scale"),
        ({"sampling": {"cfg_scale": [1.0, 1.55]}}, "one guidance scale"),  # suite all includes shapes
        ({"text": {"items": "a.jsonl", "tasks": ["piqa"]}}, "exclude"),
        ({"text": {"limit": 0}}, "limit"),
    ]
    for fields, word in bad:
        with pytest.raises(UserError, match=word):
            build_config(EvaluateConfig, {"checkpoint": "c", "out": "o", **fields})


def test_report_states_the_caption_decoding(run_dir, tmp_path):
    out = tmp_path / "beam"
    args = ["--suite", "shapes", "--checkpoint", run_dir, "--out", out, "--num-items", 2, *FAST]
    assert _cli(*args, "--decoding", "beam", "--set", "sampling.num_beams=3", "--cfg-scale", 2) == 0
    report = (out / "report.md").read_text()
    assert "## settings" in report.split("## shapes")[0]
    assert "guidance 2; captions: beam search (3 beams, length penalty 1), at most 4 tokens." in report


def test_all_runs_text_and_shapes_resumes_and_refuses_other_settings(run_dir, tmp_path):
    out = tmp_path / "eval"
    mc = _small_mc_file(tmp_path / "mc.jsonl")
    common = ["--checkpoint", run_dir, "--out", out, "--num-items", 5, "--shapes-seed", 7, "--text-items", mc, *FAST]
    assert _cli("--suite", "all", *common) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["suites_run"] == ["text", "shapes"] and "coco-root" in metrics["suites_skipped"]["coco"]
    assert metrics["step"] == 3 and metrics["text"]["identical"] and metrics["text"]["num_items"] == 5
    gen = metrics["shapes"]["generation"]
    assert gen["counts"]["background"] == 5 and gen["chance"]["colour"] == pytest.approx(1 / 7)
    assert set(gen["accuracy"]) >= {"background", "colour", "shape", "position"}
    assert 0 <= metrics["shapes"]["captioning"]["cider"] and metrics["shapes"]["resolution"] == 32
    # the report renders: its images exist and are valid PNGs, the grid's prompts are listed in grid order
    images = _report_images(out)
    assert "shapes/generation_grid.png" in images and "text/accuracy.png" in images
    assert all(_valid_png(out / rel) for rel in images)
    report = (out / "report.md").read_text()
    prompts = [json.loads(line)["caption"] for line in (out / "shapes" / "prompts.jsonl").read_text().splitlines()]
    assert "| " + " | ".join(prompts) + " |" in report and "suites not run" in report
    # the report says how its images and captions were made
    assert "shapes images: dpm-solver, 2 steps, guidance 1.55; captions: greedy, at most 4 tokens." in report
    keys = [json.loads(line)["key"] for line in (out / "shapes" / "prompts.jsonl").read_text().splitlines()]
    assert keys == [f"shapes-7-{i:08d}" for i in range(5)]  # --shapes-seed picks the held-out items
    captions = [json.loads(line)["caption"] for line in (out / "shapes" / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == 5 and all(len(c.split()) <= 4 for c in captions)  # --max-new-tokens 4, one word each
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "evaluation" and manifest["complete"]
    assert manifest["files"]["shapes/generations/00004.png"]["sha256"] and manifest["counts"]["kept"] == 5
    assert (out / "text" / "per_item_fused.jsonl").is_file() and (out / "config.yaml").is_file()

    # resume: only the missing generation is made again, the others are left as they are
    gens = out / "shapes" / "generations"
    (gens / "00002.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in gens.iterdir()}
    assert _cli("--suite", "shapes", *common) == 0
    after = {p.name: p.stat().st_mtime_ns for p in gens.iterdir()}
    assert sorted(after) == [f"{i:05d}.png" for i in range(5)] and all(after[k] == v for k, v in before.items())
    # other generation settings would mix images: refused, unless --overwrite starts over
    assert _cli("--suite", "shapes", *common, "--cfg-scale", 2) == 2
    assert (gens / "00000.png").stat().st_mtime_ns == before["00000.png"]
    assert _cli("--suite", "shapes", *common, "--cfg-scale", 2, "--overwrite") == 0
    assert (gens / "00000.png").stat().st_mtime_ns != before["00000.png"]
    assert json.loads((out / "manifest.json").read_text())["generation_settings"]["cfg_scale"]["shapes"] == [2.0]


def test_text_suite_default_set_and_a_model_whose_text_changed(run_dir, tmp_path):
    import shutil

    moved_base = shutil.copytree(run_dir.parent / "base", tmp_path / "moved-base")
    metrics = run_evaluate(
        build_config(
            EvaluateConfig,
            {
                "checkpoint": str(run_dir),
                "out": str(tmp_path / "frozen"),
                "suite": "text",
                "batch_size": 16,
                "base": str(moved_base),
            },
        )
    )
    text = metrics["text"]
    assert text["base_model"] == str(moved_base)  # --base: both the fused model and the reference LM use it
    assert text["identical"] and text["max_abs_diff"] == 0.0 and text["num_items"] > 200  # the shipped tiny set
    assert text["models"]["base"] == text["models"]["fused"]
    per_item = {
        name: [
            json.loads(line)
            for line in (tmp_path / "frozen" / "text" / f"per_item_{name}.jsonl").read_text().splitlines()
        ]
        for name in ("base", "fused")
    }
    assert [r["logliks"] for r in per_item["base"]] == [r["logliks"] for r in per_item["fused"]]
    assert metrics["suites_run"] == ["text"] and "shapes" not in metrics
    # text modules trained too (freeze_text=False): the fused model is no longer its base, and the suite says so
    from lmfusion_cli.model import checkpoint

    unfrozen = make_fused(run_dir.parent / "base", make_tokenizer(), freeze_text=False, seed=1)
    checkpoint.save_trainable(unfrozen, tmp_path / "unfrozen")
    changed = run_evaluate(
        build_config(
            EvaluateConfig,
            {
                "checkpoint": str(tmp_path / "unfrozen"),
                "out": str(tmp_path / "changed"),
                "suite": "text",
                "vae": str(run_dir.parent / "vae"),
                "text": {"items": str(_small_mc_file(tmp_path / "mc.jsonl"))},
            },
        )
    )
    assert not changed["text"]["identical"] and changed["text"]["max_abs_diff"] > 0
    assert "differ" in (tmp_path / "changed" / "report.md").read_text()


def test_text_items_with_field_map_from_jsonl_and_datasets_folder(run_dir, tmp_path):
    import datasets

    rows = [
        {"goal": f"a {c} square on a", "sol1": "left", "sol2": "blue background", "answer": "2"}
        for c in ("red", "green", "black")
    ]
    (tmp_path / "piqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    fields = [
        "--set",
        "text.fields.context=goal",
        "--set",
        "text.fields.choices=[sol1, sol2]",
        "--set",
        "text.fields.label=answer",
        "--set",
        "text.fields.label_offset=1",
    ]
    out = tmp_path / "jsonl"
    assert (
        _cli("--suite", "text", "--checkpoint", run_dir, "--out", out, "--text-items", tmp_path / "piqa.jsonl", *fields)
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["text"]["num_items"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == {"invalid-json": 1}  # the bad line is counted, not fatal
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "disk"
    assert (
        _cli(
            "--suite",
            "text",
            "--checkpoint",
            run_dir,
            "--out",
            out,
            "--text-items",
            tmp_path / "ds",
            "--text-split",
            "validation",
            *fields,
        )
        == 0
    )
    per_item = (out / "text" / "per_item_base.jsonl").read_text().splitlines()
    assert [json.loads(r)["label"] for r in per_item] == [1, 1]


def test_shapes_suite_on_the_test_split_of_a_prepared_set(run_dir, tmp_path):
    from lmfusion_cli.data.config import PrepareConfig
    from lmfusion_cli.data.prepare import run_prepare

    data = tmp_path / "shapes"
    run_prepare(
        PrepareConfig(
            source="shapes", out=str(data), num_items=24, resolution=32, seed=3, val_fraction=0.1, test_fraction=0.25
        )
    )
    manifest = json.loads((data / "manifest.json").read_text())
    out = tmp_path / "eval"
    assert (
        _cli(
            "--suite",
            "shapes",
            "--checkpoint",
            run_dir,
            "--out",
            out,
            "--data",
            data,
            "--sampler",
            "ddim",
            "--decoding",
            "beam",
            *FAST,
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())["shapes"]
    assert metrics["num_items"] == manifest["splits"]["test"]["items"] > 0 and "test split" in metrics["items"]
    prompts = [json.loads(line) for line in (out / "shapes" / "prompts.jsonl").read_text().splitlines()]
    assert all(p["key"].startswith("shapes-3-") for p in prompts)  # the prepared items, not make_item(·, 1000)
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["sampling"]["sampler"] == "ddim" and config["sampling"]["decoding"] == "beam"
    assert _cli("--suite", "shapes", "--checkpoint", run_dir, "--out", tmp_path / "x", "--data", tmp_path) == 2


def test_coco_suite_end_to_end_with_stand_in_weights(run_dir, tmp_path):
    root = make_coco_fixture(tmp_path / "coco", num_images=24, size=(40, 32))
    inception = save_tiny_inception(tmp_path / "inception.pt")
    clip_config, clip_weights = save_tiny_clip(tmp_path)
    out = tmp_path / "eval"
    args = [
        "--checkpoint",
        run_dir,
        "--out",
        out,
        "--coco-root",
        root,
        "--karpathy-split",
        root / "dataset_coco.json",
        "--num-prompts",
        6,
        "--coco-seed",
        1,
        "--num-caption-images",
        3,
        "--inception",
        inception,
        "--clip-arch",
        "tiny-test-clip",
        "--clip-weights",
        clip_weights,
        "--clip-config",
        clip_config,
        "--fid-stats-dir",
        tmp_path / "stats",
        "--set",
        "coco.caption_metrics=[bleu, cider]",
        *FAST,
    ]
    assert _cli("--suite", "coco", *args) == 0  # no --cfg-scale: the paper's two scales
    coco = json.loads((out / "metrics.json").read_text())["coco"]
    assert coco["num_test_images"] == 3 and coco["skipped"]["skipped"] == {"missing-image-file": 1}
    assert len((out / "coco" / "captions.jsonl").read_text().splitlines()) == 3
    assert "CIDEr" in coco["captioning"] and "BLEU-4" in coco["captioning"] and "METEOR" not in coco["captioning"]
    protocol = coco["generation"]["protocol"]
    assert (protocol["num_prompts"], protocol["num_reference_images"], protocol["num_distinct_images"]) == (6, 6, 6)
    assert protocol["resolution"] == 32 and protocol["extractor"].startswith("inception.pt-")
    assert (protocol["cfg_scales"], protocol["sampler"], protocol["steps"], protocol["seed"]) == (
        [1.0, 1.55],
        "dpm-solver",
        2,
        1,
    )
    assert protocol["clip_model"].startswith("tiny-test-clip (tiny-test-clip.pt-")
    assert set(coco["generation"]["by_cfg_scale"]) == {"cfg=1", "cfg=1.55"}
    for figures in coco["generation"]["by_cfg_scale"].values():
        assert figures["num_generated"] == 6 and figures["fid"] > 0 and 0 <= figures["clip_score"] <= 100
    assert not protocol["reference_stats_cached"] and len(list((tmp_path / "stats").glob("*.npz"))) == 1
    prompts = (out / "coco" / "prompts.jsonl").read_text().splitlines()
    assert json.loads(prompts[0])["seed"] == 1 and len(prompts) == 7
    images = _report_images(out)
    assert {"coco/generation_grid_cfg-1.png", "coco/generation_grid_cfg-1.55.png"} <= set(images)
    assert all(_valid_png(out / rel) for rel in images)
    report = (out / "report.md").read_text()
    assert "generation.by_cfg_scale.cfg=1.55.fid" in report and "generation.protocol.num_reference_images" in report
    assert json.loads((out / "manifest.json").read_text())["counts"]["skipped"] == {"missing-image-file": 1}
    # a rerun reuses the generations and the cached reference statistics
    assert _cli("--suite", "coco", *args) == 0
    again = json.loads((out / "metrics.json").read_text())["coco"]["generation"]
    assert again["protocol"]["reference_stats_cached"]
    assert again["by_cfg_scale"]["cfg=1"]["fid"] == pytest.approx(coco["generation"]["by_cfg_scale"]["cfg=1"]["fid"])
    # more prompts than distinct images: refused before anything loads
    assert _cli("--suite", "coco", *args[: -len(FAST) - 2], "--num-prompts", 24, "--out", tmp_path / "many") == 2
    assert not (tmp_path / "many").exists()


OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "",
    "NO_PROXY": "",
}
"""No network: hub libraries in offline mode, and every URL through a closed local port (refused at once)."""


def _subprocess_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMFUSION_QUIET": "1", **OFFLINE, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lmfusion_cli.cli", "evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("case", ["missing-inception", "wrong-layout", "offline-inception", "offline-clip"])
def test_coco_input_errors_exit_2_with_one_sentence(run_dir, tmp_path, case):
    """Offline, weights that are neither given nor cached stop the run with one sentence naming the file: the
    download is clean-fid's / open_clip's own call (`fid.cleanfid_inception`, `clip_score.load_clip_pretrained`),
    here refused by the closed proxy port, not mocked."""
    root = make_coco_fixture(tmp_path / "coco")
    inception = save_tiny_inception(tmp_path / "inception.pt")
    weights = ["--inception", inception, "--clip-weights", tmp_path / "clip.pt"]
    if case == "missing-inception":
        inception = tmp_path / "weights" / "inception-2015-12-05.pt"
        clip_config, clip_weights = save_tiny_clip(tmp_path)
        weights = [
            "--inception",
            inception,
            "--clip-arch",
            "tiny-test-clip",
            "--clip-config",
            clip_config,
            "--clip-weights",
            clip_weights,
        ]
        named = str(inception)
    elif case == "wrong-layout":
        (root / "annotations" / "captions_val2014.json").rename(root / "captions_val2014.json")
        named = "annotations/captions_val2014.json"
    elif case == "offline-inception":  # no --inception: clean-fid's own InceptionV3W(download=True) in an empty folder
        clip_config, clip_weights = save_tiny_clip(tmp_path)
        weights = [
            "--clip-arch",
            "tiny-test-clip",
            "--clip-config",
            clip_config,
            "--clip-weights",
            clip_weights,
            "--set",
            f"coco.cleanfid_dir={tmp_path / 'cleanfid'}",
        ]
        named = str(tmp_path / "cleanfid" / "inception-2015-12-05.pt")
    else:  # no --clip-weights: open_clip's pretrained tag, not in an empty Hugging Face cache
        weights = ["--inception", inception, "--set", f"coco.clip_cache_dir={tmp_path / 'clip-cache'}"]
        named = "open_clip_pytorch_model.bin"
    result = _subprocess_cli(
        "--suite",
        "coco",
        "--checkpoint",
        run_dir,
        "--out",
        tmp_path / "eval",
        "--coco-root",
        root,
        "--num-prompts",
        4,
        *weights,
        env={"HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].count(". ") == 0, lines
    assert named in lines[0]
    if case.startswith("offline"):
        assert "cannot be downloaded" in lines[0] and "--" in lines[0]  # and which option takes a local copy
        assert not (tmp_path / "cleanfid" / "inception-2015-12-05.pt").exists()  # no partial file left behind
    assert not (tmp_path / "eval").exists()  # nothing was started


def test_user_errors_before_any_work(run_dir, tmp_path, capsys):
    assert _cli("--suite", "coco", "--checkpoint", run_dir, "--out", tmp_path / "a") == 2
    assert "--coco-root" in capsys.readouterr().err
    assert _cli("--suite", "text", "--checkpoint", tmp_path / "none", "--out", tmp_path / "b") == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        _cli(
            "--suite", "text", "--checkpoint", run_dir, "--out", tmp_path / "c", "--text-items", tmp_path / "none.jsonl"
        )
        == 2
    )
    assert "none.jsonl" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert _cli("--suite", "text", "--checkpoint", run_dir, "--out", mine, "--overwrite") == 2
    assert "holds no lmfusion evaluation" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"
    if not torch.cuda.is_available():
        assert _cli("--suite", "text", "--checkpoint", run_dir, "--out", tmp_path / "d", "--device", "cuda:3") == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_every_option_reaches_its_config_field_and_yaml_is_overridden(tmp_path, monkeypatch):
    import lmfusion_cli.evaluation.stage as stage

    seen = []
    monkeypatch.setattr(stage, "run_evaluate", seen.append)
    (tmp_path / "eval.yaml").write_text(
        "suite: text\nbatch_size: 3\nsampling:\n  steps: 9\n  num_beams: 2\ncoco:\n  num_prompts: 50\n"
    )
    p = str(tmp_path)
    options = {
        "--suite": "coco",
        "--checkpoint": p + "/ck",
        "--out": p + "/out",
        "--num-items": 7,
        "--shapes-seed": 11,
        "--data": p + "/data",
        "--text-split": "dev",
        "--coco-root": p + "/coco",
        "--karpathy-split": p + "/k.json",
        "--num-caption-images": 12,
        "--coco-seed": 4,
        "--inception": p + "/inc.pt",
        "--clip-arch": "RN50",
        "--clip-pretrained": "yfcc15m",
        "--clip-weights": p + "/clip.bin",
        "--clip-config": p + "/clip.json",
        "--fid-stats-dir": p + "/stats",
        "--cfg-scale": "1.0,2.5",
        "--sampler": "euler",
        "--tasks": "hellaswag,my.yaml",
        "--text-limit": 5,
        "--decoding": "top-p",
        "--max-new-tokens": 6,
        "--ptb-tokenizer": "java",
        "--base": p + "/base",
        "--tokenizer": p + "/tok",
        "--vae": p + "/vae",
        "--device": "cpu",
    }
    args = [str(a) for kv in options.items() for a in kv]
    assert _cli(*args, "--overwrite", "--config", tmp_path / "eval.yaml", "--set", "sampling.cache=false") == 0
    cfg = seen[0]
    assert (cfg.suite, cfg.checkpoint, cfg.out, cfg.batch_size, cfg.ptb_tokenizer) == (
        "coco",
        p + "/ck",
        p + "/out",
        3,
        "java",
    )
    assert (cfg.base, cfg.tokenizer, cfg.vae, cfg.device, cfg.overwrite) == (
        p + "/base",
        p + "/tok",
        p + "/vae",
        "cpu",
        True,
    )
    assert (cfg.shapes.num_items, cfg.shapes.seed, cfg.shapes.data) == (7, 11, p + "/data")
    assert (cfg.text.tasks, cfg.text.limit, cfg.text.split) == (("hellaswag", "my.yaml"), 5, "dev")
    c = cfg.coco
    assert (c.root, c.karpathy_split, c.num_caption_images, c.num_prompts, c.seed) == (
        p + "/coco",
        p + "/k.json",
        12,
        50,
        4,
    )
    assert (c.inception, c.clip_arch, c.clip_pretrained, c.clip_weights, c.clip_config, c.fid_stats_dir) == (
        p + "/inc.pt",
        "RN50",
        "yfcc15m",
        p + "/clip.bin",
        p + "/clip.json",
        p + "/stats",
    )
    s = cfg.sampling
    assert (s.cfg_scale, s.steps, s.sampler, s.decoding, s.max_new_tokens, s.num_beams, s.cache) == (
        (1.0, 2.5),
        9,
        "euler",
        "top-p",
        6,
        2,
        False,
    )
    assert s.scales_for("coco") == (1.0, 2.5)
    assert _cli("--checkpoint", "c", "--out", "o", "--suite", "pictures") == 2


def test_an_interrupted_run_resumes_keeping_what_it_generated(run_dir, tmp_path, monkeypatch):
    import lmfusion_cli.evaluation.suite_runs as suite_runs

    real = suite_runs._generate_fn
    calls = []

    def crashing(cfg, loaded, cfg_scale):
        generate = real(cfg, loaded, cfg_scale)

        def generate_fn(prompts, seeds):
            calls.append(seeds)
            if len(calls) == 2:
                raise KeyboardInterrupt  # the run is stopped during the second batch
            return generate(prompts, seeds)

        return generate_fn

    out = tmp_path / "eval"
    args = ["--suite", "shapes", "--checkpoint", run_dir, "--out", out, "--num-items", 4, *FAST, "--batch-size", 2]
    monkeypatch.setattr(suite_runs, "_generate_fn", crashing)
    assert _cli(*args) == 130
    gens = out / "shapes" / "generations"
    first = {p.name: p.stat().st_mtime_ns for p in gens.iterdir()}
    assert sorted(first) == ["00000.png", "00001.png"] and not (out / "metrics.json").exists()
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    monkeypatch.setattr(suite_runs, "_generate_fn", real)
    assert _cli(*args) == 0
    assert all((gens / name).stat().st_mtime_ns == t for name, t in first.items()) and len(list(gens.iterdir())) == 4
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
