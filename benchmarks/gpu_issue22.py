"""Issue 22's GPU measurements in one run: tokens/s, MFU and peak memory of real training steps against `lmfusion plan`.

What runs (the repo's own code throughout):

- The model is `LMFusionModel` on a base built from a config.json with random weights (no download):
  the shipped Llama-3.2-1B and Llama-3-8B shapes in `lmfusion_cli/assets/base-configs/`, the 8B cut to 2
  and 4 layers. It is built on the meta device (`training.sharded_load.build_meta_model`), materialised
  with `to_empty`, and filled with N(0, initializer_range) weights (norms 1, image experts copied from the
  text layers, BOI/EOI rows the table's mean, patcher and diffusion values from their real init).
- The training config is the shipped GPU config (`coco-llama3-1b.yaml` for the 1B shape,
  `paper-llama3-8b.yaml` for the 8B cut) with one process: bf16 autocast, frozen text stored in bf16
  (`train.frozen_bf16`), fp32 master weights and AdamW, the config's micro-batch (64 / 65 examples) packed
  into 4,096-token rows by the workload (`LMFusionWorkload.make_micro_batch` → `sequence.pack`) in the
  config's mix (80 % caption→image, 10 % caption dropout), detached caption prefix; each step is the
  trainer's `training.step.train_step` (forward, backward, clip, AdamW). Each case changes only
  `model.attention_backend` and `train.activation_checkpointing`.
- Inputs are synthetic: latents N(0, 1) of 4×32×32 (256 image tokens with patch 2), captions of 24–48 random
  words, one token per word (`WordTokenizer`; 36 tokens on average, `lmfusion plan`'s default). The same
  micro-batch is used for every step (the packed shapes, hence the compiled kernels, stay fixed).
- Timing: `--warmup` steps (flex compiles here), then `--steps` timed steps, each between
  `torch.cuda.synchronize()` calls; the median step counts. tokens/s = non-padding tokens per step / median
  step time. Peak memory = `torch.cuda.max_memory_allocated()` over all steps of the case (reserved too).
- FLOPs and MFU: MFU = model FLOPs per step / (median step time × `--peak-tflops`), with the model FLOPs of
  `lmfusion plan`'s formula (`training/plan.py`) at this batch's token mix: per token and layer
  2·P forward, backward 4·P for image tokens, 2·P for frozen text that still needs input gradients, 0 for
  the detached caption prefix; attention 4·L²·H·d per document of L tokens, ×3 for forward + backward; the
  LM head at its targets; the patcher counted by FlopCounterMode. Checkpoint recompute is not model FLOPs.
  The sdpa cases also count one step with `torch.utils.flop_counter` (eager kernels); their attention count
  is the dense T×T of each packed row, so it over-counts attention against the per-document formula.
- `lmfusion plan` runs in-process for each case (`make_plan` on the same config: 1 GPU, batch = the
  micro-batch, the measured mean caption length, this GPU's memory): per-GPU memory and step time at its
  MFU (`--mfu`, 0.40). Memory is compared as measured max allocated / plan's tensors (plan total less its
  reserve for CUDA context and fragmentation) and measured max reserved / (plan total less 1 GiB context).
  Issue 22's goal: within 15 %.

Each case is guarded (an OOM or a compile error is recorded and the rest runs); `--budget-s` skips the
cases that no longer fit and still writes what it has. Results go to `--out`: `gpu_issue22.json` (rewritten
after every case) and `gpu_issue22.md` (the tables).

`--device cpu --tiny` is the CPU smoke test (tiny widths, 128-token rows, 8 examples, 1 + 2 steps, < 1 minute):
every path but the CUDA-only ones. FlexAttention has no CPU backward, so there the flex cases train with
sdpa (each such case says so in `note`), and peak memory comes from the profiler's allocation events.

    PYTHONPATH=$PWD python3 benchmarks/gpu_issue22.py --out DIR [--budget-s 300] [--cases NAME,NAME]
    PYTHONPATH=$PWD python3 benchmarks/gpu_issue22.py --device cpu --tiny --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BASE_CONFIGS = REPO / "lmfusion_cli" / "assets" / "base-configs"
GiB = 2**30


@dataclass(frozen=True)
class Shape:
    config_json: str
    """Folder of the shipped config.json in `assets/base-configs/`."""
    run_config: str
    """The GPU training config this shape trains with."""
    layers: int | None = None
    """Cut the base to this many decoder layers (None: as shipped)."""


SHAPES = {
    "1b": Shape("meta-llama--Llama-3.2-1B", "pipelines/configs/coco-llama3-1b.yaml"),
    "8b-2l": Shape("meta-llama--Meta-Llama-3-8B", "pipelines/configs/paper-llama3-8b.yaml", 2),
    "8b-4l": Shape("meta-llama--Meta-Llama-3-8B", "pipelines/configs/paper-llama3-8b.yaml", 4),
}

CASES = [  # (name, shape, attention backend, activation checkpointing), in the order they run
    ("1b-flex-every2", "1b", "flex", "every-2"),  # the coco config as shipped
    ("1b-flex-none", "1b", "flex", "none"),
    ("1b-sdpa-none", "1b", "sdpa", "none"),  # masked sdpa (K/V expanded) against flex, same rows
    ("1b-flex-layers", "1b", "flex", "layers"),
    ("8b2-flex-none", "8b-2l", "flex", "none"),
    ("8b4-flex-none", "8b-4l", "flex", "none"),
    ("8b2-flex-layers", "8b-2l", "flex", "layers"),  # the paper config's checkpointing
    ("8b4-flex-layers", "8b-4l", "flex", "layers"),
    ("8b4-sdpa-none", "8b-4l", "sdpa", "none"),
]

TINY_BASE = {  # --tiny: the shipped config.json with these widths (GQA kept: 4 query heads, 2 KV heads)
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
}
TINY_RUN = {
    "model": {"unet_channels": [16, 32], "unet_layers_per_block": 1, "latent_size": 8},
    "data": {"seq_len": 128},
    "train": {"micro_batch_size": 8},
}


# ---- inputs ------------------------------------------------------------------------------------------
class SyntheticSource:
    """The latent cache's reader interface (`training.loader.LatentSource`) over N(0, 1) latents and
    captions of `words` random words."""

    def __init__(self, num_items: int, shape: tuple[int, int, int], words: tuple[int, int], seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.latent_shape = shape
        lengths = torch.randint(words[0], words[1] + 1, (num_items,), generator=g).tolist()
        self.records = [
            {"key": f"s{i:05d}", "caption": " ".join(f"w{int(w)}" for w in torch.randint(0, 50000, (n,), generator=g))}
            for i, n in enumerate(lengths)
        ]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]

    def draw(self, i: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(self.latent_shape, generator=generator)


class WordTokenizer:
    """One token per whitespace word, ids in [3, vocab): what the workload asks of a tokenizer."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in text.split()]}


def write_base(folder: Path, shape: Shape, tiny: bool) -> Path:
    """A base folder with only a config.json: the shipped shape, cut to `shape.layers`, tiny widths if asked."""
    config = json.loads((BASE_CONFIGS / shape.config_json / "config.json").read_text())
    if shape.layers:
        config["num_hidden_layers"] = shape.layers
    if tiny:
        config.update(TINY_BASE, num_hidden_layers=min(config["num_hidden_layers"], 4 if shape.layers else 2))
        config.update(bos_token_id=1, eos_token_id=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def run_config(base: Path, shape: Shape, backend: str, checkpointing: str, tiny: bool):
    """The shape's GPU training config for one process: batch = one micro-batch, this case's options."""
    from lmfusion_cli.common.configs import build_config, deep_merge, read_yaml
    from lmfusion_cli.training.config import TrainRunConfig

    data = read_yaml(REPO / shape.run_config)
    if tiny:
        data = deep_merge(data, TINY_RUN)
    micro = data["train"]["micro_batch_size"]
    data = deep_merge(
        data,
        {
            "base": {"path": str(base)},
            "model": {"attention_backend": backend},
            "data": {"latents": "none"},
            "train": {"batch_size": micro, "activation_checkpointing": checkpointing, "out": "unused"},
            "dist": {"gpus": 1, "nodes": 1},
        },
    )
    return build_config(TrainRunConfig, data)


# ---- the model ------------------------------------------------------------------------------------------
@torch.no_grad()
def random_model(base: Path, lm_cfg, device: torch.device, seed: int = 0):
    """`LMFusionModel` of the base folder's shape with random weights: meta build, `to_empty`, then init."""
    from lmfusion_cli.training.sharded_load import _expert_source, build_meta_model, finish_materialised

    torch.manual_seed(seed)
    model, kept = build_meta_model(str(base), lm_cfg)
    model.to_empty(device=device)
    std = getattr(model.base_config, "initializer_range", 0.02)
    generator = torch.Generator(device=device).manual_seed(seed)
    params = dict(model.named_parameters())
    for name, p in params.items():
        if name in kept:
            p.copy_(kept[name])
        elif _expert_source(name) is not None or name in ("special_embed", "special_head"):
            continue  # after the text weights
        elif p.dim() == 1:  # RMSNorm gains
            p.fill_(1.0)
        else:
            p.normal_(0.0, std, generator=generator)
    finish_materialised(model, kept, device)  # experts from their text sources, kept buffers, rotary
    decoder = model.decoder
    head = model.base.get_output_embeddings()
    if getattr(model.base_config, "tie_word_embeddings", False) and head.weight is not decoder.embed_tokens.weight:
        head.weight = decoder.embed_tokens.weight
    model.special_embed.copy_(decoder.embed_tokens.weight.mean(0).expand(2, -1))
    if model.special_head is not None:
        model.special_head.copy_(head.weight.mean(0).expand(2, -1))
    return model


# ---- measurement helpers ----------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CpuPeak:
    """CPU stand-in for `max_memory_allocated`: static bytes + the allocator's peak in the profiler's events."""

    def __init__(self, tensors_bytes: int):
        from torch.profiler import ProfilerActivity, profile

        self.static = tensors_bytes
        self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)

    def __enter__(self):
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        self.prof.__exit__(*exc)
        current = peak = 0
        for event in self.prof.profiler.kineto_results.events():
            if event.name() == "[memory]":
                current += event.nbytes()
                peak = max(peak, current)
        self.peak = self.static + peak
        return False


def attention_flops(counts: dict) -> float:
    return float(sum(v for op, v in counts.items() if "attention" in str(op)))


def dynamo_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - diagnostics only
        return -1


def plan_for(config, caption_tokens: float, gpu_memory: int, device: str, mfu: float, peak_tflops: float) -> dict:
    from lmfusion_cli.training.plan import PlanOptions, make_plan

    options = PlanOptions(
        gpus=1,
        nodes=1,
        gpu_memory=gpu_memory,
        mfu=mfu,
        peak_tflops=peak_tflops,
        caption_tokens=caption_tokens,
        device=device,
    )
    return make_plan(config, options)


# ---- one case -----------------------------------------------------------------------------------------------
def run_case(name: str, shape_name: str, backend: str, checkpointing: str, args, work: Path, deadline: float) -> dict:
    from lmfusion_cli.training.build import _shard
    from lmfusion_cli.training.config import with_latent_geometry
    from lmfusion_cli.training.distributed import DistContext, compute_context
    from lmfusion_cli.training.lmfusion_workload import LMFusionWorkload
    from lmfusion_cli.training.loader import SampleStream
    from lmfusion_cli.training.optim import build_optimizer
    from lmfusion_cli.training.step import train_step

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shape = SHAPES[shape_name]
    used_backend, note = backend, ""
    if backend == "flex" and not cuda:
        used_backend, note = "sdpa", "CPU: flex has no backward on CPU, this case trained with sdpa"
    record: dict = {"name": name, "shape": shape_name, "attention": used_backend, "requested_attention": backend}
    record.update(activation_checkpointing=checkpointing, note=note, status="running")
    base = write_base(work / f"base-{shape_name}", shape, args.tiny)
    config = run_config(base, shape, used_backend, checkpointing, args.tiny)
    micro = config.train.micro_batch_size
    side = config.model.latent_size or 32
    lm_cfg = with_latent_geometry(config.model, config.model.latent_channels, side)
    words = (4, 12) if args.tiny else (24, 48)
    source = SyntheticSource(256 if args.tiny else 2048, (lm_cfg.latent_channels, side, side), words)
    stream = SampleStream(source, 0, config.data.generation_fraction, config.data.caption_dropout)
    samples = stream.next_step(micro)

    if cuda:
        record["allocated_before_bytes"] = torch.cuda.memory_allocated(device)  # a leak from an earlier case shows here
    t0 = time.perf_counter()
    model = random_model(base, lm_cfg, device)
    model.checkpoint_every = config.train.checkpoint_every
    tokenizer = WordTokenizer(model.vocab_size)
    workload = LMFusionWorkload(model, tokenizer, config.data.seq_len, None, config.data.max_caption_tokens)
    ctx = DistContext(device=device)
    wrapped = _shard(config, ctx, workload)  # the trainer's: frozen weights to bf16, wrap (none in one process)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = build_optimizer(named, config.optim, workload.text_parameter_prefix)
    autocast = compute_context(config.train.precision, config.dist.strategy, ctx)
    record["build_s"] = round(time.perf_counter() - t0, 2)

    micro_batch = workload.make_micro_batch(samples, torch.device("cpu"))
    batch = micro_batch.inputs.batch
    n_text, n_image = int((batch.modality == 0).sum()), int((batch.modality == 1).sum())
    caption_tokens = micro_batch.tokens / micro - model.num_image_tokens - 4
    record.update(
        examples=micro,
        rows=int(batch.input_ids.shape[0]),
        row_length=int(batch.input_ids.shape[1]),
        tokens_per_step=micro_batch.tokens,
        text_tokens=n_text,
        image_tokens=n_image,
        images=micro_batch.images,
        generated_images=micro_batch.generated_images,
        mean_caption_tokens=round(caption_tokens, 2),
        params_total=sum(p.numel() for p in model.parameters()),
        params_trainable=sum(p.numel() for p in params),
        # autocast keeps a bf16 copy of each fp32 trainable matrix for the step; one-process plans omit it
        autocast_bf16_copies_bytes=2 * sum(p.numel() for p in params if p.dim() >= 2) if autocast is not None else 0,
        layers=len(model.decoder.layers),
    )

    gpu_memory = torch.cuda.get_device_properties(device).total_memory if cuda else GiB
    try:
        t_plan = time.perf_counter()
        plan = plan_for(config, round(caption_tokens, 1), gpu_memory, device.type, args.mfu, args.peak_tflops)
        record["plan_s"] = round(time.perf_counter() - t_plan, 2)
        record["plan"] = {
            "per_gpu_bytes": plan["memory"]["per_gpu_bytes"],
            "parts": plan["memory"]["parts"],
            "tensors_bytes": plan["memory"]["per_gpu_bytes"] - plan["memory"]["parts"].get("reserve", 0.0),
            "activations_checkpointing_off": plan["memory"]["activations_checkpointing_off"],
            "activations_checkpointing_on": plan["memory"]["activations_checkpointing_on"],
            "flops_per_step": plan["flops_per_step"],
            "recompute_flops_per_step": plan["recompute_flops_per_step"],
            "step_seconds": plan["step_seconds"],
            "tokens_per_step": plan["tokens_per_step"],
            "tokens_per_second_per_gpu": plan["tokens_per_second_per_gpu"],
            "mfu": plan["mfu"],
            "params_total": plan["params"]["total"],
            "params_trainable": plan["params"]["trainable"],
        }
    except Exception as e:  # noqa: BLE001 - the measurement still counts
        record["plan_error"] = f"{type(e).__name__}: {e}"[:500]

    def step(count: bool = False):
        counter = None
        if count:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
        sync(device)
        start = time.perf_counter()
        with counter or contextlib.nullcontext():
            result = train_step(wrapped, workload, optimizer, params, samples, micro, 1.0, autocast, ctx)
        sync(device)
        seconds = time.perf_counter() - start
        if counter is not None:
            flops = counter.get_flop_counts().get("Global", {})
            record["flops_counted"] = float(counter.get_total_flops())
            record["flops_counted_attention_dense"] = attention_flops(flops)
            record["flops_counted_note"] = "one step, torch.utils.flop_counter; includes checkpoint recompute" + (
                "" if cuda else "; CPU: the counter has no formula for the CPU sdpa kernel, attention is uncounted"
            )
        return result, seconds

    graphs0 = dynamo_graphs()
    static = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    warm_times, losses, applied = [], [], []
    with CpuPeak(static) if not cuda else contextlib.nullcontext() as cpu_peak:
        for i in range(args.warmup):
            result, seconds = step(count=(i == args.warmup - 1 and used_backend == "sdpa"))
            warm_times.append(round(seconds, 4))
            losses.append(result.loss)
            applied.append(result.applied)
    record["warmup_s"] = warm_times
    graphs1 = dynamo_graphs()
    times = []
    for _ in range(args.steps):
        if times and time.perf_counter() + statistics.median(times) > deadline:
            record["note"] = (record["note"] + "; " if record["note"] else "") + "timed steps cut by --budget-s"
            break
        result, seconds = step()
        times.append(seconds)
        losses.append(result.loss)
        applied.append(result.applied)
    record.update(
        step_s=[round(t, 4) for t in times],
        median_step_s=statistics.median(times) if times else None,
        losses=[round(x, 4) for x in losses],
        steps_applied=applied,
        dynamo_graphs_warmup=graphs1 - graphs0,
        dynamo_graphs_timed=dynamo_graphs() - graphs1,
    )
    if cuda:
        record.update(
            peak_allocated_bytes=torch.cuda.max_memory_allocated(device),
            peak_reserved_bytes=torch.cuda.max_memory_reserved(device),
            allocated_after_step_bytes=torch.cuda.memory_allocated(device),
        )
    else:
        record.update(peak_allocated_bytes=cpu_peak.peak, peak_reserved_bytes=None, allocated_after_step_bytes=None)
    derive(record, args)
    record["status"] = "ok"
    return record


def derive(record: dict, args) -> None:
    """tokens/s, MFU and the ratios against the plan."""
    median = record.get("median_step_s")
    if not median:
        return
    record["tokens_per_s"] = record["tokens_per_step"] / median
    record["positions_per_s"] = record["rows"] * record["row_length"] / median
    plan = record.get("plan")
    if plan:
        peak = args.peak_tflops * 1e12
        record["mfu_plan_formula"] = plan["flops_per_step"] / (median * peak)
        record["hardware_flops_utilisation"] = (plan["flops_per_step"] + plan["recompute_flops_per_step"]) / (
            median * peak
        )
        record["ratio_tokens_per_s_measured_over_plan"] = record["tokens_per_s"] / plan["tokens_per_second_per_gpu"]
        record["ratio_peak_allocated_over_plan_tensors"] = record["peak_allocated_bytes"] / plan["tensors_bytes"]
        if record.get("peak_reserved_bytes"):
            record["ratio_peak_reserved_over_plan_less_context"] = record["peak_reserved_bytes"] / (
                plan["per_gpu_bytes"] - GiB
            )
    if record.get("flops_counted"):
        record["mfu_counted"] = record["flops_counted"] / (median * args.peak_tflops * 1e12)


def matmul_ceiling(device: torch.device) -> float:
    """TFLOP/s of a bf16 8192×8192×8192 matmul on random data (mean of 10 after 3 warm-ups)."""
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12


# ---- report ------------------------------------------------------------------------------------------------
def summary(cases: list[dict]) -> dict:
    """Flex against sdpa, and per-layer figures from the 8B cut to 2 and 4 layers."""
    by = {c["name"]: c for c in cases if c.get("status") == "ok"}
    out: dict = {}
    if "1b-flex-none" in by and "1b-sdpa-none" in by:
        f, s = by["1b-flex-none"], by["1b-sdpa-none"]
        out["flex_over_sdpa_1b"] = {
            "tokens_per_s": f["tokens_per_s"] / s["tokens_per_s"],
            "peak_allocated": f["peak_allocated_bytes"] / s["peak_allocated_bytes"],
            "flex_beats_sdpa": f["tokens_per_s"] > s["tokens_per_s"],
            "note": "" if f["attention"] == "flex" else "not a comparison: the flex case trained with sdpa (CPU)",
        }
    for ckpt in ("none", "layers"):
        two, four = by.get(f"8b2-flex-{ckpt}"), by.get(f"8b4-flex-{ckpt}")
        if two and four:
            entry = {
                "peak_allocated_bytes_per_layer": (four["peak_allocated_bytes"] - two["peak_allocated_bytes"]) / 2,
                "step_s_per_layer": (four["median_step_s"] - two["median_step_s"]) / 2,
            }
            if two.get("plan") and four.get("plan"):
                entry["plan_tensors_bytes_per_layer"] = (
                    four["plan"]["tensors_bytes"] - two["plan"]["tensors_bytes"]
                ) / 2
                entry["ratio"] = entry["peak_allocated_bytes_per_layer"] / entry["plan_tensors_bytes_per_layer"]
            out[f"8b_per_layer_flex_{ckpt}"] = entry
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"# Issue 22 measurements: {meta['device_name']} (torch {meta['torch']}, {meta['when']})",
        "",
        f"Peak {meta['peak_tflops']:g} TFLOP/s bf16 for MFU; plan at {meta['mfu']:.0%} MFU; "
        f"{meta['warmup']} warmup + {meta['steps']} timed steps per case (median); tokens = non-padding tokens.",
        "",
        "| case | attention | ckpt | rows×len | tokens/step | step s | tokens/s | MFU | peak alloc GiB | "
        "plan GiB (tensors) | alloc/plan | plan tok/s | meas/plan tok/s | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "–"  # noqa: E731
    for c in result["cases"]:
        plan = c.get("plan") or {}
        status = c.get("status", "?")
        if status != "ok":
            status = f"{status}: {c.get('error', c.get('reason', ''))}"[:80].replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {c['name']} | {c.get('attention', '')} | {c.get('activation_checkpointing', '')} | "
            f"{c.get('rows', '–')}×{c.get('row_length', '–')} | {fmt(c.get('tokens_per_step'), 'd')} | "
            f"{fmt(c.get('median_step_s'), '.3f')} | {fmt(c.get('tokens_per_s'), ',.0f')} | "
            f"{fmt(100 * c['mfu_plan_formula'] if 'mfu_plan_formula' in c else None, '.1f')}% | "
            f"{fmt(c['peak_allocated_bytes'] / GiB if c.get('peak_allocated_bytes') else None, '.2f')} | "
            f"{fmt(plan['tensors_bytes'] / GiB if plan else None, '.2f')} | "
            f"{fmt(c.get('ratio_peak_allocated_over_plan_tensors'), '.3f')} | "
            f"{fmt(plan.get('tokens_per_second_per_gpu'), ',.0f')} | "
            f"{fmt(c.get('ratio_tokens_per_s_measured_over_plan'), '.2f')} | {status} |"
        )
    s = result.get("summary", {})
    if "flex_over_sdpa_1b" in s:
        x = s["flex_over_sdpa_1b"]
        lines += [
            "",
            f"Flex / masked sdpa (1B, no checkpointing): tokens/s {x['tokens_per_s']:.2f}×, "
            f"peak memory {x['peak_allocated']:.2f}×. {x['note']}",
        ]
    for key, x in s.items():
        if key.startswith("8b_per_layer"):
            lines += [
                "",
                f"8B per layer ({key.removeprefix('8b_per_layer_')}): "
                f"{x['peak_allocated_bytes_per_layer'] / GiB:.2f} GiB measured"
                + (
                    f", plan {x['plan_tensors_bytes_per_layer'] / GiB:.2f} GiB ({x['ratio']:.3f}×)"
                    if "ratio" in x
                    else ""
                )
                + f", {x['step_s_per_layer'] * 1000:.1f} ms per step.",
            ]
    return "\n".join(lines) + "\n"


def write(out: Path, result: dict) -> None:
    result["summary"] = summary(result["cases"])
    for name, text in (
        ("gpu_issue22.json", json.dumps(result, indent=2, default=str)),
        ("gpu_issue22.md", markdown(result)),
    ):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny widths and rows (the CPU smoke test)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_issue22_out")))
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip cases that would end after this")
    parser.add_argument(
        "--case-estimate-s", type=float, default=None, help="a case's expected length (default 25 s; tiny 3 s)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="warmup steps (default 2; tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5; tiny 2)")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all); --list shows them")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--mfu", type=float, default=0.40, help="the MFU the plan assumes for its step time")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU mode; 1 is fastest on a busy machine)")
    args = parser.parse_args()
    if args.list:
        print("\n".join(f"{n:18s} {s:6s} {b:5s} {c}" for n, s, b, c in CASES))
        return 0
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    args.steps = args.steps if args.steps is not None else (2 if args.tiny else 5)
    estimate = args.case_estimate_s if args.case_estimate_s is not None else (3.0 if args.tiny else 25.0)
    chosen = [c for c in CASES if not args.cases or c[0] in args.cases.split(",")]
    unknown = set(filter(None, args.cases.split(","))) - {c[0] for c in CASES}
    if unknown:
        print(f"error: --cases {','.join(sorted(unknown))} unknown; see --list", file=sys.stderr)
        return 2
    start = time.perf_counter()
    deadline = start + args.budget_s
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    import transformers

    result = {
        "meta": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "tiny": args.tiny,
            "peak_tflops": args.peak_tflops,
            "mfu": args.mfu,
            "warmup": args.warmup,
            "steps": args.steps,
            "budget_s": args.budget_s,
            "mfu_formula": "lmfusion plan's model FLOPs (training/plan.py) at the batch's token mix / (median step × peak)",
        },
        "cases": [],
    }
    print(f"gpu_issue22: {result['meta']['device_name']}, torch {torch.__version__}, {len(chosen)} case(s)")
    if device.type == "cuda":
        result["meta"]["matmul_tflops_measured"] = matmul_ceiling(device)
        print(
            f"bf16 8192³ matmul: {result['meta']['matmul_tflops_measured']:.0f} TFLOP/s (peak for MFU: {args.peak_tflops:g})"
        )
    durations: dict[tuple[str, str], float] = {}
    compiled_for = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, backend, checkpointing in chosen:
            family = SHAPES[shape].config_json
            if compiled_for not in (None, family):  # a new head size: compile flex afresh, statically
                torch._dynamo.reset()  # (else automatic dynamic shapes would make the head size symbolic)
            compiled_for = family
            left = deadline - time.perf_counter()
            first_compile = backend == "flex" and device.type == "cuda" and (family, backend) not in durations
            expect = durations.get((family, backend), 2 * estimate if first_compile else estimate)
            if left < expect:
                result["cases"].append(
                    {
                        "name": name,
                        "shape": shape,
                        "attention": backend,
                        "activation_checkpointing": checkpointing,
                        "status": "skipped",
                        "reason": f"--budget-s: {left:.0f} s left, a case takes ~{expect:.0f} s",
                    }
                )
                print(f"[{name}] skipped (budget: {left:.0f} s left)")
                write(args.out, result)
                continue
            t0 = time.perf_counter()
            try:
                record = run_case(name, shape, backend, checkpointing, args, Path(tmp), deadline)
            except Exception as e:  # noqa: BLE001 - recorded; the other cases still run
                record = {
                    "name": name,
                    "shape": shape,
                    "attention": backend,
                    "activation_checkpointing": checkpointing,
                    "status": "error",
                    "error": f"{type(e).__name__}: {e}"[:1000],
                    "traceback": traceback.format_exc()[-4000:],
                }
                print(record["traceback"], file=sys.stderr)
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            record["case_s"] = round(time.perf_counter() - t0, 2)
            if record["status"] == "ok":
                durations[(family, backend)] = record["case_s"]
            result["cases"].append(record)
            write(args.out, result)
            print(
                f"[{name}] {record['status']} in {record['case_s']:.1f} s"
                + (
                    f": {record['tokens_per_s']:,.0f} tokens/s, peak {record['peak_allocated_bytes'] / GiB:.2f} GiB"
                    + (
                        f", alloc/plan {record['ratio_peak_allocated_over_plan_tensors']:.3f}"
                        if "ratio_peak_allocated_over_plan_tensors" in record
                        else ""
                    )
                    + (f", MFU {100 * record['mfu_plan_formula']:.1f}%" if "mfu_plan_formula" in record else "")
                    if record["status"] == "ok" and record.get("tokens_per_s")
                    else f": {record.get('error', '')[:200]}"
                )
            )
    result["meta"]["total_s"] = round(time.perf_counter() - start, 1)
    write(args.out, result)
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
