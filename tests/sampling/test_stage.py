"""`lmfusion sample` end to end on a fake training run (tiny base, tokenizer, VAE saved to tmp):
checkpoint resolution, byte-identical PNGs for the same seed, skipped bad images, one-sentence errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lmfusion_cli.cli import main
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import file_entry, write_manifest
from lmfusion_cli.model import LMFusionModel, checkpoint, resolve_boi_eoi
from lmfusion_cli.sampling.loading import load_for_sampling, resolve_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from sampling_helpers import make_base, make_tokenizer, make_vae  # noqa: E402


def _save_step(run: Path, step: int, model, complete: bool = True) -> Path:
    step_dir = run / "checkpoints" / f"step-{step:08d}"
    step_dir.mkdir(parents=True)
    checkpoint.save_trainable(model, step_dir / "model")
    files = {f"model/{p.name}": file_entry(p) for p in sorted((step_dir / "model").iterdir())}
    write_manifest(step_dir, "training-checkpoint", complete=complete, files=files, step=step)
    return step_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from lmfusion_cli.common.vae import vae_identity

    root = tmp_path_factory.mktemp("fake-run")
    tok = make_tokenizer()
    (root / "base").mkdir()
    make_base(len(tok)).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    vae = make_vae()
    vae.save_pretrained(root / "vae")
    boi, eoi = resolve_boi_eoi(tok)
    model = LMFusionModel.from_base(
        str(root / "base"),
        latent_size=8,
        latent_channels=4,
        patch_size=2,
        unet_channels=(16, 32),
        boi_id=boi,
        eoi_id=eoi,
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    run = root / "run"
    _save_step(run, 5, model)
    _save_step(run, 9, model)
    _save_step(run, 12, model, complete=False)  # a newer, unfinished checkpoint is ignored
    identity = {**vae_identity(str(root / "vae"), vae), "scaling_factor": 1.3, "shift_factor": 0.1}
    write_manifest(run, "training-run", complete=False, trains={"base": str(root / "base"), "latent_vae": identity})
    (run / "config.yaml").write_text("base:\n  path: x\n  tokenizer: null\n")
    return run


def _cli(*args) -> int:
    try:
        main(["sample", *map(str, args)])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_resolve_checkpoint_forms(run_dir):
    newest = resolve_checkpoint(run_dir)
    assert newest.step == 9 and newest.run_dir == run_dir and newest.model_dir.name == "model"
    assert resolve_checkpoint(run_dir / "checkpoints" / "step-00000005").step == 5
    assert resolve_checkpoint(run_dir / "checkpoints" / "step-00000005" / "model").step == 5
    with pytest.raises(UserError, match="incomplete"):
        resolve_checkpoint(run_dir / "checkpoints" / "step-00000012")
    with pytest.raises(UserError, match="does not exist"):
        resolve_checkpoint(run_dir / "nope")
    with pytest.raises(UserError, match="not a run folder"):
        resolve_checkpoint(run_dir.parent / "base")  # a Hugging Face folder, not ours
    empty_run = run_dir.parent / "empty-run"
    (empty_run / "checkpoints").mkdir(parents=True, exist_ok=True)
    with pytest.raises(UserError, match="no complete checkpoint"):
        resolve_checkpoint(empty_run)


def test_damaged_weights_are_refused_naming_the_file(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    weights = copy / "checkpoints" / "step-00000009" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="model.safetensors"):
        resolve_checkpoint(copy)


def test_loading_uses_the_recorded_vae_scale_and_refuses_another_vae(run_dir, tmp_path):
    loaded = load_for_sampling(run_dir)
    assert loaded.codec.scaling_factor == 1.3 and loaded.codec.shift_factor == 0.1
    assert loaded.codec.resolution == 32 and loaded.checkpoint.step == 9
    other = make_vae(seed=1)
    other.save_pretrained(tmp_path / "other-vae")
    with pytest.raises(UserError, match="other weights"):
        load_for_sampling(run_dir, vae=str(tmp_path / "other-vae"))


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.png"))}


def test_t2i_same_seed_same_bytes_other_seed_differs(run_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("red circle\nblue square on green background\n")
    common = [
        "--checkpoint",
        run_dir,
        "--prompts",
        prompts,
        "--steps",
        3,
        "--sampler",
        "ddim",
        "--cfg-scale",
        3,
        "--batch-size",
        3,
        "--num-per-prompt",
        2,
        "--grid-columns",
        4,
    ]
    assert _cli(*common, "--seed", 7, "--out", tmp_path / "a") == 0
    assert _cli(*common, "--seed", 7, "--out", tmp_path / "b") == 0
    assert _cli(*common, "--seed", 8, "--out", tmp_path / "c") == 0
    a, b, c = (_pngs(tmp_path / x) for x in "abc")
    assert len(a) == 4 and a == b
    assert all(a[k] != c[k] for k in a)
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()
    grid = np.asarray(Image.open(tmp_path / "a" / "grid.png"))
    assert grid.shape == (32, 4 * 32 + 3 * 2, 3)  # --grid-columns 4: one row of 4 tiles with 2 px gaps
    records = [json.loads(line) for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [7, 8, 9, 10]
    assert [r["prompt"] for r in records] == ["red circle"] * 2 + ["blue square on green background"] * 2
    assert records[0]["step"] == 9 and records[0]["sampler"] == "ddim" and records[0]["cfg_scale"] == 3.0
    assert records[0]["steps"] == 3 and records[0]["file"] == "images/00000.png"
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["kind"] == "samples" and manifest["counts"]["kept"] == 4
    assert manifest["files"]["images/00000.png"]["sha256"]


def test_no_cache_gives_the_same_images(run_dir, tmp_path):
    args = ["--checkpoint", run_dir, "--prompt", "red circle", "--steps", 2, "--sampler", "euler", "--seed", 1]
    assert _cli(*args, "--out", tmp_path / "cached") == 0
    assert _cli(*args, "--no-cache", "--out", tmp_path / "uncached") == 0
    x = np.asarray(Image.open(tmp_path / "cached" / "images" / "00000.png")).astype(int)
    y = np.asarray(Image.open(tmp_path / "uncached" / "images" / "00000.png")).astype(int)
    assert np.abs(x - y).max() <= 1  # float rounding may move a pixel by one level
    records = [json.loads(line) for line in (tmp_path / "uncached" / "samples.jsonl").read_text().splitlines()]
    assert records[0]["cache"] is False


def test_caption_skips_bad_images_and_counts_them(run_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (48, 40), colour).save(folder / f"{k}.png")
    (folder / "2.png").write_bytes(b"not a png")
    out = tmp_path / "caps"
    code = _cli(
        "--checkpoint",
        run_dir,
        "--task",
        "caption",
        "--images",
        folder,
        "--images",
        tmp_path / "gone.jpg",
        "--max-new-tokens",
        4,
        "--decoding",
        "beam",
        "--num-beams",
        2,
        "--set",
        "length_penalty=0.5",
        "--out",
        out,
    )
    assert code == 0
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [Path(r["key"]).name for r in records] == ["0.png", "1.png"]
    assert all(isinstance(r["caption"], str) and r["decoding"] == "beam" and r["num_beams"] == 2 for r in records)
    assert all(r["length_penalty"] == 0.5 for r in records), "every beam setting is recorded"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 2 and manifest["counts"]["num_skipped"] == 2
    assert set(manifest["counts"]["skipped"]) == {"missing-file", "corrupt-image"}


def test_interleaved_writes_documents(run_dir, tmp_path):
    out = tmp_path / "doc"
    assert (
        _cli(
            "--checkpoint",
            run_dir,
            "--task",
            "interleaved",
            "--prompt",
            "a red",
            "--max-new-tokens",
            5,
            "--steps",
            2,
            "--out",
            out,
        )
        == 0
    )
    record = json.loads((out / "interleaved.jsonl").read_text())
    assert record["prompt"] == "a red" and record["stop_reason"] in ("eos", "max-new-tokens", "image-limit")
    for segment in record["segments"]:
        assert segment["type"] == "text" or (out / segment["file"]).is_file()


@pytest.mark.parametrize(
    "case", ["empty-prompts", "all-bad-images", "not-empty-out", "missing-checkpoint", "unknown-sampler"]
)
def test_user_errors_are_one_sentence_exit_2(run_dir, tmp_path, capsys, case):
    args = {
        "empty-prompts": ["--prompts", tmp_path / "empty.txt"],
        "all-bad-images": ["--task", "caption", "--images", tmp_path / "bad.png"],
        "not-empty-out": ["--prompt", "x"],
        "missing-checkpoint": ["--prompt", "x"],
        "unknown-sampler": ["--prompt", "x", "--sampler", "heun"],
    }[case]
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bad.png").write_bytes(b"")
    out = tmp_path / "out"
    if case == "not-empty-out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    ckpt = tmp_path / "missing" if case == "missing-checkpoint" else run_dir
    capsys.readouterr()
    assert _cli("--checkpoint", ckpt, *args, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()  # (log lines and library progress bars may precede it)
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0] and errors[0].count(". ") == 0
    if case == "not-empty-out":
        assert (out / "keep.txt").read_text() == "mine"


def test_yaml_config_and_set_overrides_reach_the_stage(run_dir, tmp_path):
    cfg = tmp_path / "sample.yaml"
    cfg.write_text(f"checkpoint: {run_dir}\nprompt: red circle\nsteps: 5\nsampler: ddim\ndevice: cpu\n")
    out = tmp_path / "from-yaml"
    assert _cli("--config", cfg, "--set", "steps=2", "--set", "cfg_scale=1.5", "--out", out) == 0
    record = json.loads((out / "samples.jsonl").read_text())
    assert record["steps"] == 2 and record["cfg_scale"] == 1.5 and record["sampler"] == "ddim"
    assert "steps: 2" in (out / "config.yaml").read_text()


def test_cuda_without_a_gpu_is_a_user_error(run_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert _cli("--checkpoint", run_dir, "--prompt", "x", "--device", "cuda", "--out", tmp_path / "o") == 2


def test_base_and_tokenizer_overrides(run_dir, tmp_path):
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    moved = tmp_path / "moved-base"
    shutil.copytree(run_dir.parent / "base", moved)
    loaded = load_for_sampling(run_dir, base=str(moved))
    assert loaded.model.base_id == str(moved)
    core = Tokenizer(
        models.WordLevel(
            vocab={"<unk>": 0, "<s>": 1, "</s>": 2, "<|end_of_image|>": 3, "<|begin_of_image|>": 4}, unk_token="<unk>"
        )
    )
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>").save_pretrained(tmp_path / "tok")
    with pytest.raises(UserError, match="other image-token ids"):
        load_for_sampling(run_dir, tokenizer=str(tmp_path / "tok"))
    with pytest.raises(UserError, match="cannot be loaded"):
        load_for_sampling(run_dir, base=str(tmp_path / "no-such-base"))
