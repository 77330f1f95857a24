"""Loading that scales (issue 22): on 2 gloo processes with SmolLM2-135M, building on the meta device and
reading each process's shards gives the same weights as today's path (load everything, then shard), at
no more than 0.75× today's summed peak resident memory. Each process measures its own peak (VmHWM,
reset when the child starts)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from forked import run_forked

REAL_LM = Path(__file__).resolve().parents[2] / ".cache" / "smollm2-135m-instruct"
OPTIONS = {"latent_size": 8, "latent_channels": 4, "unet_channels": (16, 32)}

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not (REAL_LM / "model.safetensors").is_file(), reason="SmolLM2-135M is not converted (make real-lm)"
    ),
]


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _load(path: str, out: str) -> None:
    """One process: build + shard by `path` (today | sharded), then record peak RSS and local-shard hashes."""
    import torch.distributed as dist

    from lmfusion_cli.model import LMFusionConfig, LMFusionModel
    from lmfusion_cli.training.config import DistConfig
    from lmfusion_cli.training.distributed import init_distributed, wrap_model
    from lmfusion_cli.training.sharded_load import build_meta_model, load_into_shards

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current resident size
    ctx = init_distributed(DistConfig(backend="gloo"))
    torch.manual_seed(0)
    config = LMFusionConfig(**OPTIONS)
    if path == "today":
        model = LMFusionModel.from_base(str(REAL_LM), config)
    else:
        model, kept = build_meta_model(str(REAL_LM), config)
    units = [[layer] + ([model.image_experts[i]]) for i, layer in enumerate(model.base.model.layers)]
    wrap_model(model, units, "fsdp", ctx)
    if path != "today":
        load_into_shards(model, kept, ctx.device)
    hashes = {}
    for name, p in [*model.named_parameters(), *model.named_buffers()]:
        local = p.to_local() if hasattr(p, "to_local") else p
        hashes[name] = hashlib.sha256(local.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    tied = model.base.lm_head.weight is model.base.model.embed_tokens.weight
    result = {"peak": _peak_rss_bytes(), "hashes": hashes, "tied": tied}
    Path(out, f"{path}-{ctx.rank}.json").write_text(json.dumps(result))
    del model
    import gc

    gc.collect()  # gloo threads otherwise may abort at exit (MEASURED-NOTES)
    dist.barrier()
    dist.destroy_process_group()


def test_sharded_loading_equals_today_at_three_quarters_of_the_memory(tmp_path):
    for path in ("today", "sharded"):
        assert not run_forked(2, _load, path, str(tmp_path), timeout=600)
    runs = {p: [json.loads((tmp_path / f"{p}-{r}.json").read_text()) for r in range(2)] for p in ("today", "sharded")}
    for rank in range(2):
        today, sharded = runs["today"][rank], runs["sharded"][rank]
        assert today["hashes"].keys() == sharded["hashes"].keys()
        different = [k for k in today["hashes"] if today["hashes"][k] != sharded["hashes"][k]]
        assert not different, different[:5]
        assert sharded["tied"] == today["tied"]
    today_sum = sum(r["peak"] for r in runs["today"])
    sharded_sum = sum(r["peak"] for r in runs["sharded"])
    print(
        f"summed peak RSS: today {today_sum / 2**20:.0f} MiB, sharded {sharded_sum / 2**20:.0f} MiB, "
        f"ratio {sharded_sum / today_sum:.2f}"
    )
    assert sharded_sum <= 0.75 * today_sum
