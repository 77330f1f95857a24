"""Issue 12 item 10 (training side): `lmfusion train` on the real LMFusion workload is SIGKILLed
mid-run, rerun with `--resume auto`, and then

- the trained model's text-only logits still equal the base model's bit for bit (frozen text is
  never stored in a checkpoint and never moves, whatever the resume did);
- its trainable weights equal an uninterrupted run's (`torch.equal`, deterministic mode).
(Restartable prepare / encode-latents: `tests/data/test_prepare_kill.py`, `test_encode_kill.py`.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from reliability_helpers import build_tiny_base, cli, train_args, write_fake_cache
from safetensors.torch import load_file

from lmfusion_cli.common.checkpoint_layout import list_checkpoints
from lmfusion_cli.training.train_log import read_jsonl

STEPS = 16
EXTRA = ("--set", "train.deterministic=true")


def _final_weights(run):
    return load_file(str(run / "checkpoints" / f"step-{STEPS:08d}" / "model" / "model.safetensors"))


def test_kill_resume_keeps_text_logits_and_equals_uninterrupted(tmp_path):
    from transformers import AutoModelForCausalLM

    from lmfusion_cli.model import checkpoint

    torch.set_num_threads(1)
    base = build_tiny_base(tmp_path / "base")
    cache = write_fake_cache(tmp_path / "lat")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMFUSION_QUIET": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmfusion_cli", *map(str, train_args(base, cache, run, STEPS, *EXTRA, save_every=4))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not list_checkpoints(run / "checkpoints"):  # the first complete checkpoint
        assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = list_checkpoints(run / "checkpoints")[-1].step
    assert killed_at < STEPS, "the run finished before it was killed"

    assert cli(*train_args(base, cache, run, STEPS, "--resume", "auto", *EXTRA, save_every=4)) == 0
    resumes = [r["step"] for r in read_jsonl(run / "logs" / "train.jsonl") if r.get("event") == "resume"]
    assert len(resumes) == 1 and killed_at <= resumes[0] < STEPS

    trained = checkpoint.load(run / "checkpoints" / f"step-{STEPS:08d}" / "model")
    reference = AutoModelForCausalLM.from_pretrained(str(base))
    ids = torch.tensor([[1, 6, 7, 10, 12, 2], [1, 8, 9, 11, 13, 14]])
    with torch.no_grad():
        assert torch.equal(trained.text_logits(ids), reference(ids).logits)
        expert, text = trained.image_experts[0].mlp.up_proj.weight, reference.model.layers[0].mlp.up_proj.weight
        assert not torch.equal(expert, text)  # the image expert trained away from its copy of the text module

    straight = tmp_path / "straight"
    assert cli(*train_args(base, cache, straight, STEPS, *EXTRA, save_every=4)) == 0
    resumed, uninterrupted = _final_weights(run), _final_weights(straight)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
