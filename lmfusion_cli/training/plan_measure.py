"""What `lmfusion plan` counts and measures on the model, with no weights and no GPU.

- `base_config`: the base's config.json (a local folder's, a shipped copy for the hub ids of our GPU
  configs in `assets/base-configs/`, or the hub's when online); `lmfusion_config` the run's model section.
- `meta_model` + `parameter_counts`: `LMFusionModel` built on the meta device, its parameters counted by role.
- `measure_layer` / `measure_patcher`: one routed decoder layer (or the patcher) runs forward under
  `FakeTensorMode` at two token counts; the bytes autograd saves (`_saved_bytes`, parameters excluded)
  and the FLOPs are differenced into an exact per-token cost.

One fake mode per measurement, and nothing fake outlives it (`_in_fake_mode`): every input is made
inside the mode (`allow_non_fake_inputs` off), the image expert is a fresh fake layer, not a deep copy
(deep-copying a fake module makes tensors of another, ad hoc fake mode, which the mode then converted as
if real: that corrupted the heap, and `lmfusion plan` crashed with SIGSEGV at a later, random tensor op),
the pack hook keeps the saved tensors outside the graph (returning the tensor itself makes a graph →
tensor → graph cycle that leaked every fake graph for good), and the cyclic garbage is collected before
the mode exits.

How these become memory, FLOPs and step time per GPU is `plan.py`."""

from __future__ import annotations

import gc
import json
import warnings
from pathlib import Path

import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.training.config import TrainRunConfig

SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "assets" / "base-configs"


def base_config(path: str):
    """The base's transformers config: local folder, shipped shapes for a known hub id, or the hub."""
    from transformers import AutoConfig

    from lmfusion_cli.training.lmfusion_workload import resolve_base_path

    local = Path(resolve_base_path(path))
    shipped = SHIPPED_CONFIGS / path.replace("/", "--")
    for folder in (local, shipped):
        if (folder / "config.json").is_file():
            return AutoConfig.from_pretrained(str(folder))
    try:
        return AutoConfig.from_pretrained(path)  # a hub id: fetches config.json only, when online
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        raise UserError(
            f"Cannot read the config.json of base {path}; pass a local folder with a config.json "
            f"(--set base.path=DIR) or go online for the hub id."
        ) from e


def lmfusion_config(config: TrainRunConfig):
    """The model section with latent sizes from the latent manifest if present, else the config or 4×32×32."""
    from lmfusion_cli.training.config import with_latent_geometry

    model = config.model
    channels, side = model.latent_channels, model.latent_size or 32  # 256×256 through an 8×-down VAE (the paper's)
    manifest = Path(config.data.latents) / "manifest.json"
    if manifest.is_file():
        shape = json.loads(manifest.read_text()).get("latent_shape")
        if shape:
            channels, side = shape[0], shape[1]
    return with_latent_geometry(model, channels, side)


def meta_model(base_cfg, lm_cfg):
    """LMFusionModel with every tensor on the meta device (no memory, no download)."""
    from transformers import AutoModelForCausalLM

    from lmfusion_cli.model import LMFusionModel

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(base_cfg)
        return LMFusionModel(base, lm_cfg, "plan")


def parameter_counts(model) -> dict[str, int]:
    """Exact counts by role (tied weights once)."""
    counts = {"text_frozen": 0, "text_trainable": 0, "image_experts": 0, "image_other": 0}
    for name, p in model.named_parameters():
        if name.startswith("base."):
            counts["text_trainable" if p.requires_grad else "text_frozen"] += p.numel()
        elif name.startswith("image_experts."):
            counts["image_experts"] += p.numel()
        else:
            counts["image_other"] += p.numel()
    counts["total"] = sum(counts.values())
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts["per_layer_group"] = sum(p.numel() for p in model.decoder.layers[0].parameters()) + (
        sum(p.numel() for p in model.image_experts[0].parameters()) if model.image_experts is not None else 0
    )
    counts["text_layer"] = sum(p.numel() for p in model.decoder.layers[0].parameters())
    return counts


def _saved_bytes(fn, params: list[torch.Tensor], square: int | None = None) -> tuple[int, int]:
    """(bytes autograd saves while `fn()` runs, of which (.., T, T) masks) excluding parameters."""
    keep = {p.untyped_storage()._cdata for p in params}
    seen: dict[int, tuple[int, bool]] = {}
    alive: list[torch.Tensor] = []  # the saved tensors, held here (not by the graph) until counted

    def pack(t: torch.Tensor) -> int:
        storage = t.untyped_storage()
        if storage._cdata not in keep:
            is_mask = square is not None and t.dim() == 4 and t.shape[-1] == t.shape[-2] == square
            seen[storage._cdata] = (storage.nbytes(), is_mask)
        alive.append(t)  # keeps each storage's address unique while the forward runs
        return len(alive) - 1  # an index, not the tensor: no graph → tensor → graph cycle

    with warnings.catch_warnings():  # FakeTensor's storage nbytes goes through a deprecated data_ptr check
        warnings.simplefilter("ignore", UserWarning)
        with torch.autograd.graph.saved_tensors_hooks(pack, alive.__getitem__):
            fn()
    alive.clear()
    return sum(n for n, _ in seen.values()), sum(n for n, m in seen.values() if m)


def _in_fake_mode(fn, **options):
    """`fn()` under a fresh `FakeTensorMode`; the fake objects it made are gone (and the cyclic ones
    collected) before the mode exits. `fn` must return plain numbers, no fake object."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(**options):
        try:
            return fn()
        finally:
            gc.collect()


def _build(dtype: torch.dtype, factory):
    """`factory()` with `dtype` as the default dtype (the modules' parameters in that dtype)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return factory()
    finally:
        torch.set_default_dtype(default)


def measure_layer(
    base_cfg, lm_cfg, image_fraction: float, dtype: torch.dtype, tokens: int, backend: str, text_trainable: bool
) -> tuple[float, float]:
    """(saved bytes per token, dense-mask bytes) of one routed layer at `tokens` positions (one row).

    Runs the real `routed_layer` on fake tensors of the base's width in `dtype`."""
    from transformers import AutoModelForCausalLM

    from lmfusion_cli.model.attention import Attention, MaskInfo
    from lmfusion_cli.model.layers import ImageExpert, Routes, routed_layer

    small = base_cfg.__class__.from_dict(
        {
            **base_cfg.to_dict(),
            "num_hidden_layers": 1,
            "vocab_size": 8,
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": None,
        }
    )

    def one(T: int) -> tuple[int, int]:
        def fake() -> tuple[int, int]:  # everything lives in this frame, inside the mode: no real tensor
            n_text = T - int(round(T * image_fraction))
            routes = Routes(text=torch.arange(n_text), image=torch.arange(n_text, T), num_positions=T)  # text, image
            docs, images = torch.zeros(1, T, dtype=torch.long), torch.full((1, T), -1)
            images[0, n_text:] = 0
            attention = Attention(MaskInfo(images, images, docs, docs, 0), "sdpa")  # flex saves the same
            positions = torch.arange(T)[None]
            base = _build(dtype, lambda: AutoModelForCausalLM.from_config(small))
            layer = base.model.layers[0].requires_grad_(text_trainable)
            expert = None
            if lm_cfg.experts != "none":  # fresh modules, not a deep copy (see `ImageExpert`)
                source = _build(dtype, lambda: AutoModelForCausalLM.from_config(small)).model.layers[0]
                expert = ImageExpert(source, lm_cfg.experts, copy=False).requires_grad_(True)
            hidden = torch.randn(T, small.hidden_size, dtype=dtype, requires_grad=True)
            rope = base.model.rotary_emb(hidden.view(1, T, -1), positions)
            params = list(base.parameters()) + (list(expert.parameters()) if expert is not None else [])
            return _saved_bytes(
                lambda: routed_layer(layer, expert, hidden, routes, (1, T), rope, attention), params, square=T
            )

        return _in_fake_mode(fake)

    t1, t2 = 256, 512
    (b1, m1), (b2, m2) = one(t1), one(t2)
    per_token = ((b2 - m2) - (b1 - m1)) / (t2 - t1)
    mask_bytes_per_pos2 = m2 / (t2 * t2)
    return per_token, mask_bytes_per_pos2


def measure_patcher(lm_cfg, hidden: int, dtype: torch.dtype) -> tuple[float, float]:
    """(saved activation bytes, forward FLOPs) of the patcher's encode + decode, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    from lmfusion_cli.model.patchers import make_patcher

    def fake(n: int) -> tuple[int, int]:  # everything fake lives in this frame, inside the mode
        patcher = _build(dtype, lambda: make_patcher(lm_cfg, hidden))
        latents = torch.randn(n, lm_cfg.latent_channels, lm_cfg.latent_size, lm_cfg.latent_size, dtype=dtype)
        t = torch.full((n,), 500.0)
        counter = FlopCounterMode(display=False)

        def run():
            tokens, skips = patcher.encode(latents, t)
            patcher.decode(tokens, t, skips)

        with counter:
            saved, _ = _saved_bytes(run, list(patcher.parameters()))
        return saved, counter.get_total_flops()

    (s1, f1), (s2, f2) = (_in_fake_mode(lambda n=n: fake(n)) for n in (1, 2))
    return s2 - s1, f2 - f1
