"""Loading that scales (issue 22): build on the meta device, shard, then read each process's part.

Today's path loads the whole base on every process and shards afterwards (8B in fp32: 32 GB of host
memory per process). Here:

1. `build_meta_model`: the base is built from its config.json on the meta device and wrapped in
   `LMFusionModel`; the image experts, image norm and BOI/EOI rows are meta too. The small modules
   built from our own code (patcher, diffusion schedule) are real and initialised exactly as today
   (same RNG stream), and their values are kept aside.
2. The caller shards the model (`wrap_model`, FSDP2); meta parameters become meta shards.
3. `load_into_shards`: `to_empty` allocates only this process's shards; each base parameter's rows of
   this process are read straight from the safetensors files (seek + read of the row range, no mmap of
   the whole file); image experts and the image norm are copied shard to shard from the text modules
   (same shapes, same placements: a local copy); BOI/EOI rows are the mean of the embedding table, as
   in `LMFusionModel.__init__`; the kept small modules and the rotary buffers are put back.

The weights equal today's path bit for bit (test on SmolLM2-135M with 2 gloo processes).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch
from torch import nn

_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsRows:
    """Row-range reads of the tensors of a folder's `*.safetensors` files (header parsed, no mmap)."""

    def __init__(self, folder: str | Path):
        self.entries: dict[str, tuple[Path, torch.dtype, list[int], int]] = {}
        for path in sorted(Path(folder).glob("*.safetensors")):
            with open(path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(size))
            for key, meta in header.items():
                if key != "__metadata__":
                    self.entries[key] = (
                        path,
                        _DTYPES[meta["dtype"]],
                        meta["shape"],
                        8 + size + meta["data_offsets"][0],
                    )

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def rows(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) of dim 0 of tensor `key`, in the file's dtype."""
        path, dtype, shape, offset = self.entries[key]
        stop = shape[0] if stop is None else stop
        row_numel = math.prod(shape[1:]) if len(shape) > 1 else 1
        itemsize = torch.empty((), dtype=dtype).element_size()
        out = torch.empty((stop - start) * row_numel * itemsize, dtype=torch.uint8)
        if out.numel():
            with open(path, "rb") as f:
                f.seek(offset + start * row_numel * itemsize)
                f.readinto(out.numpy())
        return out.view(dtype).view(stop - start, *shape[1:]) if shape else out.view(dtype).view(())


def can_load_sharded(base_path: str, lm_config) -> bool:
    """The scalable path needs a local causal-LM folder with safetensors and experts copied from the text ones."""
    folder = Path(base_path)
    if not (folder / "config.json").is_file() or "llava" in json.loads((folder / "config.json").read_text()).get(
        "model_type", ""
    ):  # a LLaVA base (vision tower, projector) loads through today's path
        return False
    return any(folder.glob("*.safetensors")) and lm_config.image_init == "copy" and not lm_config.from_scratch


def build_meta_model(base_path: str, lm_config):
    """`LMFusionModel` with the base, experts, image norm and BOI/EOI rows on the meta device.

    Returns (model, kept): `kept` holds the values of every real (non-meta) parameter and buffer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmfusion_cli.model import LMFusionModel

    base_config = AutoConfig.from_pretrained(base_path)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(base_config, dtype=getattr(torch, lm_config.dtype))
    model = LMFusionModel(base, lm_config, base_path)
    kept = {
        name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()] if not t.is_meta
    }
    return model, kept


def local_shard(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(this process's part of `param`, its first row in the full tensor). Plain tensors: all of it."""
    if not hasattr(param, "to_local"):
        return param.data, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return param.to_local(), (offset[0] if len(offset) else 0)


@torch.no_grad()
def copy_into_shards(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full tensors `state` (by parameter name) into `model`'s parameters: this process's rows of an
    FSDP-sharded one, all of a plain one (cast to the parameter's dtype and device)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, full in state.items():
        local, first = local_shard(params[name])
        if local.numel():
            local.copy_(full[first : first + local.shape[0]] if local.dim() else full)


def _expert_source(name: str) -> str | None:
    """The text parameter an image-expert parameter is copied from."""
    if name.startswith("image_experts."):
        index, rest = name.removeprefix("image_experts.").split(".", 1)
        return f"base.model.layers.{index}.{rest}"
    if name.startswith("image_norm."):
        return "base.model.norm." + name.removeprefix("image_norm.")
    return None


@torch.no_grad()
def load_into_shards(model: nn.Module, kept: dict[str, torch.Tensor], device: torch.device) -> None:
    """Materialise a (sharded) meta-built model on `device` with the base's weights (see module doc)."""
    core = getattr(model, "module", model)
    files = SafetensorsRows(core.base_id)
    model.to_empty(device=device)
    params = dict(core.named_parameters())
    for name, param in params.items():
        local, first = local_shard(param)
        if name in kept:
            full = kept[name]
        elif name.startswith("base."):
            key = name.removeprefix("base.")
            if key not in files:
                raise ValueError(f"{key} is missing from the safetensors files of {core.base_id}")
            local.copy_(files.rows(key, first, first + local.shape[0]) if local.dim() else files.rows(key))
            continue
        elif _expert_source(name) is not None:
            continue  # after every text parameter is in place
        elif name in ("special_embed", "special_head"):
            full = _special_rows(core, files, name, local.dtype)
        else:
            raise ValueError(f"no source for parameter {name} in sharded loading")
        local.copy_(full[first : first + local.shape[0]] if local.dim() else full)
    finish_materialised(core, kept, device)


@torch.no_grad()
def finish_materialised(core: nn.Module, kept: dict[str, torch.Tensor], device: torch.device) -> None:
    """The last steps of materialising a meta-built `LMFusionModel` once its text parameters hold their
    values: image experts copied from their text sources (shard to shard), the kept buffers restored, and
    the rotary embedding rebuilt (its buffers were meta)."""
    params = dict(core.named_parameters())
    for name, param in params.items():
        source = _expert_source(name)
        if source is not None:
            local_shard(param)[0].copy_(local_shard(params[source])[0])
    for name, buffer in core.named_buffers():
        if name in kept:
            buffer.copy_(kept[name])
    decoder = core.decoder
    decoder.rotary_emb = type(decoder.rotary_emb)(config=core.base_config).to(device)


def _special_rows(core: nn.Module, files: SafetensorsRows, name: str, dtype: torch.dtype) -> torch.Tensor:
    """BOI/EOI rows as `LMFusionModel.__init__` makes them: mean of the input (or output) table, or the
    table's rows of reserved ids."""
    head_key = "lm_head.weight" if "lm_head.weight" in files else "model.embed_tokens.weight"
    table = files.rows("model.embed_tokens.weight" if name == "special_embed" else head_key).to(dtype)
    if core.new_special_rows:
        return table.mean(0).expand(2, -1).clone()
    return table[[core.boi_id, core.eoi_id]].clone()
