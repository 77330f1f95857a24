"""LLaVAFusion through the `lmfusion` command line on a saved tiny LLaVA-NeXT folder (`--base FOLDER`):
prepare → encode-latents → train (2 steps) → sample t2i → sample caption, and the captions are the
base VLM's own greedy answers (`transformers` `generate` on the same folder, image and prompt)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tests.model.llava_helpers import save_tiny_llava_next


def lmfusion(*args):
    """Run one `lmfusion` command in this process (the console script's own entry point: option parsing,
    stage, exit code); in-process to spare seven interpreter and transformers start-ups."""
    from lmfusion_cli.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        assert not e.code, f"lmfusion {' '.join(args[:1])} exited with {e.code}"


def _vlm_greedy(folder, image_path, max_new_tokens):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lmfusion_cli.sampling.vlm_captioning import caption_prompt

    processor = AutoProcessor.from_pretrained(folder)
    vlm = AutoModelForImageTextToText.from_pretrained(folder).eval()
    image = Image.open(image_path).convert("RGB")
    inputs = processor(images=[image], text=[caption_prompt(processor)], return_tensors="pt")
    with torch.no_grad():
        out = vlm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = processor.tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A saved tiny LLaVA-NeXT folder and a 2-step LLaVAFusion run on it (through the CLI)."""
    tmp = tmp_path_factory.mktemp("llava-cli")
    base = save_tiny_llava_next(tmp / "tiny-llava-next")
    data, latents, run = tmp / "shapes", tmp / "latents", tmp / "run"
    lmfusion("prepare", "--source", "shapes", "--out", str(data), "--num-items", "24", "--workers", "1")
    lmfusion("encode-latents", "--data", str(data), "--out", str(latents), "--workers", "1")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    lmfusion(
        "train",
        "--base",
        str(base),
        "--latents",
        str(latents),
        "--out",
        str(run),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--micro-batch-size",
        "2",
        "--set",
        "model.patcher=linear",
        "--set",
        "log.tensorboard=false",
        "--set",
        "log.val_items=2",
    )
    yield base, run
    torch.set_num_threads(threads)  # training in this process set its own; later tests get theirs back
    torch.use_deterministic_algorithms(deterministic)


def test_llava_next_base_trains_samples_and_captions(trained, tmp_path):
    base, run = trained
    records = [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["image_loss"] > 0 for r in steps)  # generation-only mix: every example a diffusion target
    from safetensors import safe_open

    saved = max((run / "checkpoints").glob("step-*")) / "model" / "model.safetensors"
    with safe_open(str(saved), framework="pt") as weights:
        names = list(weights.keys())
    assert any(n.startswith("image_experts.") for n in names)
    assert not any(n.startswith("base.") for n in names)  # the frozen VLM (vision tower too) is never stored

    lmfusion(
        "sample",
        "--checkpoint",
        str(run),
        "--prompt",
        "a red circle on a blue background",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "t2i"),
    )
    assert (tmp_path / "t2i" / "images" / "00000.png").is_file()

    images = [tmp_path / "t2i" / "images" / "00000.png", tmp_path / "wide.png"]
    Image.new("RGB", (40, 20), (200, 30, 30)).save(tmp_path / "wide.png")  # AnyRes: base crop + 2 tiles
    lmfusion(
        "sample",
        "--task",
        "caption",
        "--checkpoint",
        str(run),
        "--images",
        str(images[0]),
        "--images",
        str(images[1]),
        "--max-new-tokens",
        "6",
        "--out",
        str(tmp_path / "captions"),
    )
    captions = [json.loads(line) for line in (tmp_path / "captions" / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == 2
    for record, image in zip(captions, images):
        assert record["token_ids"] == _vlm_greedy(base, image, 6)


def test_coco_suite_captions_through_the_vlm_path(trained, tmp_path):
    from tests.evaluation.stand_ins import make_coco_fixture, save_tiny_clip, save_tiny_inception

    base, run = trained
    root = make_coco_fixture(tmp_path / "coco")
    clip_config, clip_weights = save_tiny_clip(tmp_path)
    out = tmp_path / "eval"
    lmfusion(
        "evaluate",
        "--suite",
        "coco",
        "--checkpoint",
        str(run),
        "--out",
        str(out),
        "--coco-root",
        str(root),
        "--karpathy-split",
        str(root / "dataset_coco.json"),
        "--num-prompts",
        "2",
        "--num-caption-images",
        "2",
        "--inception",
        str(save_tiny_inception(tmp_path / "inception.pt")),
        "--clip-arch",
        "tiny-test-clip",
        "--clip-weights",
        str(clip_weights),
        "--clip-config",
        str(clip_config),
        "--fid-stats-dir",
        str(tmp_path / "stats"),
        "--set",
        "coco.caption_metrics=[cider]",
        "--steps",
        "2",
        "--cfg-scale",
        "1.5",
        "--max-new-tokens",
        "4",
        "--decoding",
        "greedy",
        "--ptb-tokenizer",
        "python",
    )
    coco = json.loads((out / "metrics.json").read_text())["coco"]
    assert "CIDEr" in coco["captioning"] and coco["generation"]["by_cfg_scale"]["cfg=1.5"]["num_generated"] == 2
    rows = [json.loads(line) for line in (out / "coco" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    for row in rows:  # the VLM's own greedy answer, as text
        image = next((root / "val2014").glob(f"*{row['image_id']:012d}.jpg"))
        expected = tokenizer.decode(_vlm_greedy(base, image, 4), skip_special_tokens=True).strip()
        assert row["caption"] == expected


def test_llavafusion_config_follows_the_paper():
    import dataclasses
    from pathlib import Path

    from lmfusion_cli.common.configs import load_config
    from lmfusion_cli.training.config import TrainRunConfig, with_latent_geometry

    root = Path(__file__).resolve().parents[2]
    config = load_config(TrainRunConfig, root / "pipelines/configs/llavafusion-8b.yaml")
    paper = load_config(TrainRunConfig, root / "pipelines/configs/paper-llama3-8b.yaml")
    with_latent_geometry(config.model, 4, 32)
    assert config.base.path == "llava-hf/llama3-llava-next-8b-hf"
    assert config.data.generation_fraction is None  # = generation only for a LLaVA base
    assert (config.optim, config.schedule, config.data.caption_dropout) == (paper.optim, paper.schedule, 0.1)
    cap = config.model.understanding_max_timestep_fraction
    assert dataclasses.replace(paper.model, understanding_max_timestep_fraction=cap) == config.model


def test_text_suite_on_a_llava_base_equals_the_vlm(trained, tmp_path):
    """`evaluate --suite text` loads the LLaVA base on its own (its VLM class) and finds the fused model's
    text logits identical to it."""
    from pathlib import Path

    _, run = trained
    shipped = (Path(__file__).resolve().parents[2] / "lmfusion_cli/evaluation/data/tiny_mc.jsonl").read_text()
    (tmp_path / "items.jsonl").write_text("\n".join(shipped.splitlines()[:4]) + "\n")
    lmfusion(
        "evaluate",
        "--suite",
        "text",
        "--checkpoint",
        str(run),
        "--out",
        str(tmp_path / "eval"),
        "--text-items",
        str(tmp_path / "items.jsonl"),
    )
    text = json.loads((tmp_path / "eval" / "metrics.json").read_text())["text"]
    assert text["num_items"] == 4 and text["identical"] is True
