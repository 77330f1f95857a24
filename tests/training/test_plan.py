"""`lmfusion plan` (issue 22): exact parameter counts from a config on the meta device, and per-process
memory within 25 % of the measured peak of real small CPU training steps."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import transformers
from torch.profiler import ProfilerActivity, profile

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.model import LMFusionConfig, LMFusionModel, caption_to_image, image_to_caption, pack
from lmfusion_cli.training.config import TrainRunConfig

CAPTION = 12
MODEL = {
    "latent_size": 8,
    "latent_channels": 4,
    "patcher": "unet",
    "unet_channels": [16, 32],
    "attention_backend": "sdpa",
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def run_config(base_dir, micro: int, seq_len: int, checkpointing: str = "none") -> TrainRunConfig:
    return build_config(
        TrainRunConfig,
        {
            "base": {"path": str(base_dir)},
            "model": MODEL,
            "data": {"latents": "none", "seq_len": seq_len, "generation_fraction": 0.5},
            "train": {
                "out": "plan",
                "batch_size": micro,
                "micro_batch_size": micro,
                "precision": "fp32",
                "activation_checkpointing": checkpointing,
            },
            "dist": {"strategy": "none"},
        },
    )


_PLAN_SCRIPT = """
import json, sys, yaml
from lmfusion_cli.common.configs import build_config
from lmfusion_cli.training.config import TrainRunConfig
from lmfusion_cli.training.plan import PlanOptions, make_plan
config = build_config(TrainRunConfig, yaml.safe_load(open(sys.argv[1])))
print(json.dumps(make_plan(config, PlanOptions(**json.loads(sys.argv[2])))))
"""


def plan_in_own_process(config: TrainRunConfig, tmp_path, **options) -> dict:
    """`make_plan` in a fresh interpreter, as `lmfusion plan` runs it. Its fake-tensor measurement used to
    corrupt the heap (intermittent SIGSEGV at a later tensor op, fixed: see `plan_measure`); a crash here
    fails this test instead of taking the whole pytest run down."""
    from lmfusion_cli.common.configs import dump_yaml

    path = tmp_path / "plan-run.yaml"
    path.write_text(dump_yaml(config))
    done = subprocess.run(
        [sys.executable, "-c", _PLAN_SCRIPT, str(path), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def measured_peak_bytes(base_dir, micro: int, seq_len: int, checkpoint_every: int) -> int:
    """Parameters + the allocator's peak over two real training steps (AdamW state included)."""
    model = LMFusionModel.from_base(str(base_dir), build_config(LMFusionConfig, MODEL))
    model.checkpoint_every = checkpoint_every
    optimizer = torch.optim.AdamW(model.trainable_parameters())
    g = torch.Generator().manual_seed(0)
    kw = dict(num_image_tokens=model.num_image_tokens, boi_id=model.boi_id, eoi_id=model.eoi_id, bos_id=1, eos_id=2)
    examples = [
        (caption_to_image if i % 2 == 0 else image_to_caption)(
            torch.randint(3, 90, (CAPTION,), generator=g).tolist(), latents=torch.randn(1, 4, 8, 8, generator=g), **kw
        )
        for i in range(micro)
    ]
    batch, latents = pack(examples, seq_len)
    static = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(2):
            model(batch, latents, generator=g).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    current = peak = 0
    for event in prof.profiler.kineto_results.events():
        if event.name() == "[memory]":
            current += event.nbytes()
            peak = max(peak, current)
    return static + peak


def test_parameter_counts_are_exact(base_dir, tmp_path):
    plan = plan_in_own_process(run_config(base_dir, 4, 0), tmp_path, gpus=1, device="cpu", caption_tokens=CAPTION)
    model = LMFusionModel.from_base(str(base_dir), build_config(LMFusionConfig, MODEL))
    assert plan["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert plan["params"]["trainable"] == sum(p.numel() for p in model.trainable_parameters())
    assert plan["params"]["frozen"] == sum(p.numel() for p in model.base.parameters())


@pytest.mark.parametrize(
    "micro, seq_len, checkpointing, every", [(16, 256, "none", 0), (16, 256, "layers", 1), (32, 512, "none", 0)]
)
def test_plan_is_within_25_percent_of_measured_peak(base_dir, tmp_path, micro, seq_len, checkpointing, every):
    torch.set_num_threads(1)
    config = run_config(base_dir, micro, seq_len, checkpointing)
    plan = plan_in_own_process(config, tmp_path, gpus=1, device="cpu", caption_tokens=CAPTION, gpu_memory=2**30)
    measured = measured_peak_bytes(base_dir, micro, seq_len, every)
    predicted = plan["memory"]["per_gpu_bytes"]
    print(
        f"micro {micro} × row {seq_len} checkpointing {checkpointing}: plan {predicted / 2**20:.1f} MiB, "
        f"measured {measured / 2**20:.1f} MiB, ratio {predicted / measured:.3f}"
    )
    assert math.isclose(predicted, measured, rel_tol=0.25), (predicted, measured, plan["memory"]["parts"])


def lmfusion_in_own_process(*args: str) -> subprocess.CompletedProcess:
    """The `lmfusion` command in a fresh interpreter, as a user runs it (see `plan_in_own_process`)."""
    return subprocess.run(
        [sys.executable, "-m", "lmfusion_cli.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_plan_json_and_warning_from_the_cli(base_dir, tmp_path):
    from lmfusion_cli.common.configs import dump_yaml

    path = tmp_path / "run.yaml"
    path.write_text(dump_yaml(run_config(base_dir, 16, 256)))
    result = lmfusion_in_own_process("plan", "-c", str(path), "--gpus", "1", "--gpu-memory", "1MiB", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout)
    for key in ("total", "trainable"):
        assert plan["params"][key] > 0
    assert (
        plan["fits"] is False and plan["flops_per_step"] > 0 and plan["tokens_per_step"] == 16 * (16 + 36 + 4)
    )  # --caption-tokens default 36
    assert set(plan["memory"]["parts"]) >= {"params_frozen", "params_trainable", "grads", "optimizer", "activations"}
    result = lmfusion_in_own_process("plan", "-c", str(path), "--gpus", "1", "--gpu-memory", "1MiB")
    assert result.returncode == 0 and "warning: this configuration does not fit" in result.stdout + result.stderr


def test_measurement_leaves_no_fake_object_behind():
    """Each fake measurement drops (and collects) all it made before its mode exits, in one fake mode: it
    used to leak its fake graph for good, deep-copied the expert into tensors of a foreign mode, and left
    the rest to a later garbage collection outside the mode (an intermittent heap corruption, SIGSEGV)."""
    import gc

    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from lmfusion_cli.training.plan_measure import measure_layer, measure_patcher

    base = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    lm_cfg = build_config(LMFusionConfig, MODEL)

    def fake_objects() -> dict[int, object]:
        return {id(o): o for o in gc.get_objects() if type(o) in (FakeTensor, FakeTensorMode)}

    gc.collect()
    before = fake_objects()  # other tests of this process (torch.compile caches) may hold fake tensors
    per_token, _ = measure_layer(base, lm_cfg, 0.5, torch.float32, 512, "sdpa", False)
    saved, flops = measure_patcher(lm_cfg, 64, torch.float32)
    assert per_token > 0 and saved > 0 and flops > 0
    assert gc.collect() == 0  # nothing left for a later collection outside the mode
    assert not [o for i, o in fake_objects().items() if i not in before]
