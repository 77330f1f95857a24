"""The shortened asset build (`scripts/build_assets.py --quick`) runs end to end in under 2 minutes and its
outputs load with plain transformers/diffusers calls; every option of the script has an effect."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build_assets.py"
pytestmark = pytest.mark.slow  # four short builds: ~60 s of CPU, 2-3 min on the shared 2-core machine


def run_build(out: Path, *extra: str) -> tuple[dict, float]:
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--quick", *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "build_report.json").read_text()), time.time() - start


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("assets")
    report, seconds = run_build(out, "--lm-steps", "7", "--vae-steps", "5")
    return out, report, seconds


def test_quick_build_finishes_in_under_two_minutes(quick_build):
    _, report, seconds = quick_build
    assert seconds < 120, f"quick build took {seconds:.0f} s"
    assert report["quick"] is True and report["threads"] == 1 and report["seed"] == 0


def test_quick_build_outputs_load_with_plain_library_calls(quick_build):
    from diffusers import AutoencoderKL
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report, _ = quick_build
    tokenizer = AutoTokenizer.from_pretrained(out / "tiny-lm")
    model = AutoModelForCausalLM.from_pretrained(out / "tiny-lm")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == report["lm"]["vocab_size"]
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert (out / "tiny-lm" / "model.safetensors").is_file()
    vae = AutoencoderKL.from_pretrained(out / "tiny-vae")
    assert vae.config.scaling_factor == pytest.approx(report["vae"]["scaling_factor"])
    assert vae.config.shift_factor == pytest.approx(report["vae"]["shift_factor"])
    assert vae.config.scaling_factor != 0.18215  # measured, not the Stable Diffusion default


def test_step_options_reach_training_and_report(quick_build):
    _, report, _ = quick_build
    assert report["lm"]["training"]["steps_done"] == report["lm"]["settings"]["steps"] == 7
    assert report["vae"]["training"]["steps_done"] == report["vae"]["settings"]["steps"] == 5
    assert report["vae"]["decoder_training"]["steps_done"] == report["vae"]["settings"]["decoder_steps"] == 6
    assert not report["lm"]["training"]["stopped_early"]
    assert set(report["lm"]["heldout_perplexity"]) == {"captions", "general"}
    assert all(v > 1 for v in report["lm"]["heldout_perplexity"].values())
    assert report["bytes_total"] == sum(report["bytes"].values()) > 0


def test_readme_is_generated_from_the_measured_figures(quick_build):
    out, report, _ = quick_build
    readme = (out / "README.md").read_text()
    for kind, value in report["lm"]["heldout_perplexity"].items():
        assert f"| {kind} |" in readme and f"{value:.3f}" in readme
    assert f"{report['vae']['heldout_psnr_db']:.2f} dB" in readme
    for prompt, text in report["lm"]["greedy_samples"].items():
        assert f"`{prompt}` → `{text}`" in readme


def test_only_seed_threads_and_time_cap(quick_build, tmp_path):
    """`--only vae` rebuilds the VAE alone (the LM and its figures stay); `--vae-minutes 0` stops at once;
    `--seed` and `--threads` reach the report and change the weights."""
    out, first, _ = quick_build
    copy = tmp_path / "assets"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    lm_before = (copy / "tiny-lm" / "model.safetensors").read_bytes()
    report, _ = run_build(copy, "--only", "vae", "--vae-minutes", "0", "--seed", "1", "--threads", "2")
    assert (copy / "tiny-lm" / "model.safetensors").read_bytes() == lm_before
    assert report["lm"] == first["lm"]
    assert report["vae"]["training"]["steps_done"] == 0 and report["vae"]["training"]["stopped_early"]
    assert report["vae"]["decoder_training"]["steps_done"] == 0  # the cap holds for each phase
    assert report["seed"] == 1 and report["threads"] == 2
    assert report["vae"]["heldout_images"]["seed"] != first["vae"]["heldout_images"]["seed"]
    from safetensors.torch import load_file

    w0 = load_file(out / "tiny-vae" / "diffusion_pytorch_model.safetensors")
    w1 = load_file(copy / "tiny-vae" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    assert "stopped by the time cap" in (copy / "README.md").read_text()
    assert report["rebuilt"] == "vae" and first["rebuilt"] is None
    assert "for a rebuild of the VAE alone" in (copy / "README.md").read_text()
    assert "for a rebuild of" not in (out / "README.md").read_text()  # a whole build says nothing of the kind


def test_build_is_deterministic_and_jobs_1_equals_jobs_2(quick_build, tmp_path):
    """Same seed → bit-identical tokenizer and weights, whether LM and VAE run side by side (the default,
    `--jobs 2`, used by the fixture) or one after the other (`--jobs 1`)."""
    out, first, _ = quick_build
    report, _ = run_build(tmp_path, "--lm-steps", "7", "--vae-steps", "5", "--jobs", "1")
    assert report["jobs"] == 1 and first["jobs"] == 2
    for name in ("tiny-lm/model.safetensors", "tiny-lm/tokenizer.json", "tiny-vae/diffusion_pytorch_model.safetensors"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    assert report["lm"]["heldout_perplexity"] == first["lm"]["heldout_perplexity"]
    assert set(report["minutes_by_part"]) == set(first["minutes_by_part"]) == {"lm", "vae"}
    assert "LM then VAE" in (tmp_path / "README.md").read_text()
    assert "LM and VAE side by side" in (out / "README.md").read_text()


def test_only_run_leaves_a_running_sibling_temp_folder_alone(tmp_path):
    """`--jobs 2` starts the VAE half as `--only vae` while the LM half writes `tiny-lm.tmp-*`: the VAE
    half must not clear it (it did, and the LM save then failed with FileNotFoundError)."""
    sibling = tmp_path / "tiny-lm.tmp-inprogress"
    sibling.mkdir()
    (sibling / "part.bin").write_bytes(b"x")
    run_build(tmp_path, "--only", "vae", "--vae-steps", "2")
    assert (sibling / "part.bin").is_file()
    stale = tmp_path / "tiny-vae.tmp-crashed"
    stale.mkdir()
    run_build(tmp_path, "--only", "vae", "--vae-steps", "2")
    assert stale.exists()  # cleared only by a whole build, which starts no sibling
