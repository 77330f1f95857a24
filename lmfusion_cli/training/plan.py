"""`make_plan`: per-GPU memory, FLOPs and step time of a training config, before any GPU is rented.

- Parameters are counted exactly: the base is built from its config.json on the meta device (a local
  folder's, a shipped copy for the hub ids of our GPU configs in `assets/base-configs/`, or the hub's
  config when online) and wrapped in `LMFusionModel`, so image experts, patcher and BOI/EOI rows are
  counted by the same code that trains.
- Activations are *measured*, not guessed: one routed decoder layer of the real width runs forward under
  `FakeTensorMode` (no memory is used) on the config's text/image mix, and every tensor autograd saves
  for the backward is counted (parameters excluded). Two token counts are measured and differenced, so
  the per-token cost is exact and weights cancel; a dense (Tq, Tk) mask is reported as attention
  workspace. The patcher is measured the same way per image.
- Memory per GPU (FSDP2 over all processes): sharded parameters (frozen in their stored dtype,
  trainable fp32), fp32 gradients and AdamW moments of the trainable ones, FSDP's unsharded working set
  (root + two layer groups in the compute dtype), activations of one micro-batch (with and without
  activation checkpointing), attention workspace, a reserve (CUDA context + allocator fragmentation),
  and the headroom left.
- FLOPs per step are counted per token and layer (2·P forward; backward 4·P for tokens with trainable
  weights, 2·P for frozen text that still needs input gradients, 0 for a detached caption prefix),
  plus attention scores per document, the LM head at its targets and the patcher (FlopCounterMode).

This file turns the counts and measurements of `plan_measure.py` into the plan; neither loads weights or
touches a GPU.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from lmfusion_cli.common.devices import bf16_compute
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.training.config import TrainRunConfig
from lmfusion_cli.training.plan_measure import (
    base_config,
    lmfusion_config,
    measure_layer,
    measure_patcher,
    meta_model,
    parameter_counts,
)

GiB = 2**30
CUDA_CONTEXT_BYTES = 1 * GiB
"""Reserve for the CUDA context and NCCL buffers on a GPU."""
FRAGMENTATION = 0.05
"""Reserve for allocator fragmentation, as a fraction of the tensors' bytes (GPU only)."""


@dataclass(frozen=True)
class PlanOptions:
    gpus: int = 8
    """GPUs per node."""
    nodes: int = 1
    """Nodes."""
    gpu_memory: int = 80 * GiB
    """Memory of one GPU in bytes."""
    mfu: float = 0.40
    """Model FLOPs utilisation assumed for the step time."""
    peak_tflops: float = 989.0
    """Peak dense bf16 TFLOP/s of one GPU (H100 SXM: 989; A100: 312)."""
    caption_tokens: int = 36
    """Assumed caption length in tokens (with bos/eos/BOI/EOI and 256 image tokens ≈ 296 per example)."""
    device: str = "cuda"
    """Where the run will go: `cuda` (bf16 per train.precision=auto) or `cpu` (fp32, no reserve)."""

    @property
    def world(self) -> int:
        return self.gpus * self.nodes


def make_plan(config: TrainRunConfig, options: PlanOptions) -> dict[str, Any]:
    """The plan as a JSON-ready dict (see the module docstring for what each part means)."""
    base_cfg = base_config(config.base.path)
    lm_cfg = lmfusion_config(config)
    model = meta_model(base_cfg, lm_cfg)
    counts = parameter_counts(model)
    world = options.world
    gpu = options.device == "cuda"
    bf16 = bf16_compute(config.train.precision, options.device, assume_bf16_support=True)
    compute = torch.bfloat16 if bf16 else torch.float32
    compute_bytes = 2 if bf16 else 4
    frozen_bytes = 2 if (config.train.frozen_bf16 or config.model.dtype == "bfloat16") else 4
    sharded = config.dist.strategy == "fsdp" and world > 1
    share = world if sharded else 1
    from lmfusion_cli.model.attention import resolve_backend

    backend = resolve_backend(config.model.attention_backend, options.device)

    # ---- tokens ---------------------------------------------------------------------------------
    N = model.num_image_tokens
    example_text = options.caption_tokens + 4  # bos, BOI, EOI, eos
    example = N + example_text
    micro = config.train.micro_batch_size
    micro_tokens = micro * example
    rows = math.ceil(micro_tokens / config.data.seq_len) if config.data.seq_len else micro
    row_length = config.data.seq_len or example
    positions = rows * row_length
    per_process_micros = config.train.batch_size // (micro * world)
    tokens_per_step = config.train.batch_size * example

    # ---- parameters, gradients, optimizer -------------------------------------------------------
    hidden, layers = base_cfg.hidden_size, base_cfg.num_hidden_layers
    frozen = counts["text_frozen"]
    trainable = counts["trainable"]
    memory: dict[str, float] = {
        "params_frozen": frozen * frozen_bytes / share,
        "params_trainable": trainable * 4 / share,
        "grads": trainable * 4 / share,
        "optimizer": trainable * 8 / share,
    }
    if sharded:  # unsharded root + the current and prefetched layer group in the compute dtype
        root = counts["total"] - layers * counts["per_layer_group"]
        memory["fsdp_unsharded"] = (root + 2 * counts["per_layer_group"]) * compute_bytes
    elif bf16 and frozen_bytes == 4:  # autocast keeps bf16 copies of the weights of the running layer
        memory["fsdp_unsharded"] = counts["per_layer_group"] * 2
    else:
        memory["fsdp_unsharded"] = 0.0

    # ---- activations (measured) -----------------------------------------------------------------
    text_trainable = counts["text_trainable"] > 0
    with warnings.catch_warnings():  # FakeTensor storages go through a deprecated data_ptr check
        warnings.simplefilter("ignore", UserWarning)
        per_token, mask_per_pos2 = measure_layer(base_cfg, lm_cfg, N / example, compute, 512, backend, text_trainable)
        patcher_bytes, patcher_flops = measure_patcher(lm_cfg, hidden, compute)
    layer_bytes = per_token * micro_tokens
    residual = micro_tokens * hidden * (compute_bytes if sharded else 4)  # a checkpointed layer's input
    targets = micro * options.caption_tokens * (1 - config.data.generation_fraction) + micro
    vocab = base_cfg.vocab_size
    head_bytes = targets * vocab * (compute_bytes + 4 + 4)  # logits, fp32 upcast, softmax of the CE
    embed_bytes = positions * hidden * 4 * 2  # embeddings and the final hidden state (fp32)
    other = head_bytes + embed_bytes + patcher_bytes * micro
    every = config.train.checkpoint_every
    checkpointed = math.ceil(layers / every) if every else layers
    activations_off = layers * layer_bytes + other
    activations_on = checkpointed * residual + (layers - checkpointed) * layer_bytes + layer_bytes + other
    memory["activations"] = activations_on if every else activations_off
    if backend == "sdpa":
        memory["attention_workspace"] = rows * row_length * row_length * (1 + compute_bytes) + (
            mask_per_pos2 * row_length * row_length * rows * (layers if not every else 1)
        )
    else:  # flex: block mask only (int32 block indexes per 128×128 block)
        blocks = math.ceil(row_length / 128)
        memory["attention_workspace"] = rows * blocks * blocks * 4 * 4
    tensors = sum(memory.values())
    memory["reserve"] = (CUDA_CONTEXT_BYTES + FRAGMENTATION * tensors) if gpu else 0.0
    total = sum(memory.values())
    headroom = options.gpu_memory - total

    # ---- FLOPs ----------------------------------------------------------------------------------
    P = counts["text_layer"] - 2 * hidden  # matmul weights of one expert path (norm scales excluded)
    caption_first = config.data.generation_fraction
    text_tokens = example_text * config.train.batch_size
    image_tokens = N * config.train.batch_size
    detached = caption_first * (options.caption_tokens + 2) * config.train.batch_size if not text_trainable else 0
    text_bwd = 4 if text_trainable else 2
    layer_flops = layers * 2 * P * (3 * image_tokens + (1 + text_bwd / 2) * (text_tokens - detached) + detached)
    heads = base_cfg.num_attention_heads * (
        getattr(base_cfg, "head_dim", None) or hidden // base_cfg.num_attention_heads
    )
    attention_flops = layers * 4 * example * example * heads * 3 * config.train.batch_size
    head_flops = 2 * hidden * vocab * 2 * targets * config.train.batch_size / micro
    flops = layer_flops + attention_flops + head_flops + 3 * patcher_flops * config.train.batch_size
    forward_layer_flops = layers * 2 * P * (image_tokens + text_tokens) + attention_flops / 3
    recompute_flops = forward_layer_flops * (checkpointed / layers if every else 0.0)
    step_seconds = (flops + recompute_flops) / (world * options.peak_tflops * 1e12 * options.mfu)
    # FSDP2 all-gathers every parameter in the compute dtype in each micro-step's forward and backward
    gathered = 2 * per_process_micros * counts["total"] * compute_bytes * (world - 1) / world if sharded else 0.0
    return {
        "config": {
            "base": config.base.path,
            "gpus": options.gpus,
            "nodes": options.nodes,
            "world": world,
            "strategy": config.dist.strategy,
            "compute_dtype": str(compute).removeprefix("torch."),
            "frozen_dtype": "bfloat16" if frozen_bytes == 2 else "float32",
            "attention": backend,
            "activation_checkpointing": config.train.activation_checkpointing,
            "gpu_memory_bytes": options.gpu_memory,
            "device": options.device,
        },
        "params": {
            "total": counts["total"],
            "trainable": trainable,
            "frozen": frozen,
            "by_role": {k: counts[k] for k in ("text_frozen", "text_trainable", "image_experts", "image_other")},
        },
        "tokens": {
            "per_example": example,
            "image_per_example": N,
            "per_micro_batch": micro_tokens,
            "rows_per_micro_batch": rows,
            "micro_batches_per_process": per_process_micros,
        },
        "tokens_per_step": tokens_per_step,
        "memory": {
            "per_gpu_bytes": total,
            "parts": memory,
            "headroom_bytes": headroom,
            "activations_checkpointing_off": activations_off,
            "activations_checkpointing_on": activations_on,
            "layer_activation_bytes_per_token": per_token,
        },
        "fits": headroom >= 0,
        "flops_per_step": flops,
        "recompute_flops_per_step": recompute_flops,
        "fsdp_gather_bytes_per_gpu_per_step": gathered,
        "fsdp_gather_seconds_at_50GBps": gathered / 50e9,
        "mfu": options.mfu,
        "peak_tflops": options.peak_tflops,
        "step_seconds": step_seconds,
        "tokens_per_second_per_gpu": tokens_per_step / step_seconds / world,
    }


def format_plan(plan: dict[str, Any]) -> str:
    """The human-readable breakdown."""
    c, p, m = plan["config"], plan["params"], plan["memory"]
    gib = lambda b: f"{b / GiB:8.2f} GiB"  # noqa: E731
    lines = [
        f"plan: {c['base']} on {c['nodes']} node(s) × {c['gpus']} GPU(s) ({c['strategy']}, {c['world']} processes), "
        f"compute {c['compute_dtype']}, frozen text stored {c['frozen_dtype']}, attention {c['attention']}, "
        f"activation checkpointing {c['activation_checkpointing']}",
        f"parameters: {p['total'] / 1e9:.3f} B total, {p['trainable'] / 1e9:.3f} B trainable "
        f"(text frozen {p['by_role']['text_frozen'] / 1e9:.3f} B, image experts {p['by_role']['image_experts'] / 1e9:.3f} B, "
        f"patcher/norm/BOI-EOI {p['by_role']['image_other'] / 1e6:.1f} M)",
        f"tokens: {plan['tokens']['per_example']} per example, {plan['tokens']['per_micro_batch']} per micro-batch "
        f"({plan['tokens']['rows_per_micro_batch']} row(s)), {plan['tokens_per_step']:,} per step",
        "memory per GPU:",
    ]
    names = {
        "params_frozen": f"parameters, frozen ({c['frozen_dtype']}, sharded)",
        "params_trainable": "parameters, trainable (fp32 master, sharded)",
        "grads": "gradients (fp32, sharded)",
        "optimizer": "AdamW moments (fp32, sharded)",
        "fsdp_unsharded": "unsharded working set (gathered)",
        "activations": "activations (one micro-batch)",
        "attention_workspace": "attention workspace",
        "reserve": "CUDA context + fragmentation",
    }
    for key, value in m["parts"].items():
        lines.append(f"  {names.get(key, key):46s}{gib(value)}")
    lines += [
        f"  {'total':46s}{gib(m['per_gpu_bytes'])}   of {c['gpu_memory_bytes'] / GiB:.0f} GiB",
        f"  {'headroom':46s}{gib(m['headroom_bytes'])}",
        f"  activations with checkpointing off / on: {m['activations_checkpointing_off'] / GiB:.2f} / "
        f"{m['activations_checkpointing_on'] / GiB:.2f} GiB "
        f"(one routed layer: {m['layer_activation_bytes_per_token'] / 1024:.1f} KiB per token, measured)",
        f"FLOPs per step: {plan['flops_per_step']:.3e} (model) + {plan['recompute_flops_per_step']:.3e} (checkpoint "
        f"recompute); at {plan['mfu']:.0%} MFU of {plan['peak_tflops']:g} TFLOP/s per GPU: {plan['step_seconds']:.2f} s "
        f"per step, {plan['tokens_per_second_per_gpu']:,.0f} tokens/s per GPU",
    ]
    if plan["fsdp_gather_bytes_per_gpu_per_step"]:
        lines.append(
            f"FSDP all-gathers per GPU and step: {plan['fsdp_gather_bytes_per_gpu_per_step'] / 1e9:.0f} GB "
            f"({plan['tokens']['micro_batches_per_process']} micro-step(s)); at 50 GB/s "
            f"{plan['fsdp_gather_seconds_at_50GBps']:.2f} s, to hide behind compute (fewer, larger "
            "micro-batches gather less)"
        )
    if not plan["fits"]:
        lines.append(
            f"warning: this configuration does not fit: it needs {m['per_gpu_bytes'] / GiB:.1f} GiB per GPU "
            f"but has {c['gpu_memory_bytes'] / GiB:.0f} GiB; turn on train.activation_checkpointing, lower "
            "train.micro_batch_size or use more GPUs."
        )
    return "\n".join(lines)


def parse_bytes(text: str) -> int:
    """'80GiB', '80GB', '81920MiB', '8e10' → bytes."""
    units = {
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "b": 1,
        "": 1,
    }
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("kmgtib")
    unit = s[len(number) :]
    try:
        return int(float(number) * units[unit])
    except (KeyError, ValueError):
        raise UserError(f"--gpu-memory {text!r} is not a size; write e.g. 80GiB or 40GB.") from None
