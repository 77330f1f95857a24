"""The routed decoder layer: per-modality experts around one shared attention.

A Llama-layout decoder layer is `x + attn(norm1(x))`, then `x + mlp(norm2(x))`. Here every position
is routed *by index* to the text modules (the base model's own, frozen) or to the image expert (a
copy of them): each expert computes norms, Q/K/V, output projection and MLP only on its own tokens;
the Q/K/V are scattered back into one sequence so a single attention (RoPE, GQA and q/k norms taken
from the base's code) sees every token. Padding is routed nowhere and stays zero.

Expert variants (`LMFusionConfig.experts`): `deep` copies norms, attention projections and MLP;
`ffn-only` copies norms and MLP and shares the text attention projections; `none` has no expert
(image tokens use the text modules: the dense baseline).
"""

from __future__ import annotations

import copy as _copy
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmfusion_cli.model.attention import Attention

LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


@dataclass
class Routes:
    """Flat position indexes (into B·T) of each modality, computed once per forward.

    `frozen` (training with frozen text, issue 22): text positions whose causal context holds no
    trainable input (no image, no BOI/EOI row: a caption before its image). Their hidden states are a
    fixed function of the frozen base, so they run forward only, without a graph; their keys and values
    still feed the later tokens, as constants. `text` then holds the other text positions.
    """

    text: torch.Tensor  # (N_text,) long
    image: torch.Tensor  # (N_image,) long
    num_positions: int  # B·T
    frozen: torch.Tensor | None = None  # (N_frozen,) long, disjoint from `text`

    @classmethod
    def from_modality(cls, modality: torch.Tensor, text_code: int, image_code: int) -> Routes:
        flat = modality.reshape(-1)
        return cls(
            text=(flat == text_code).nonzero().squeeze(1),
            image=(flat == image_code).nonzero().squeeze(1),
            num_positions=flat.shape[0],
        )

    def with_frozen(self, frozen: torch.Tensor) -> Routes:
        """Move the text positions where `frozen` (B·T,) bool is True to the forward-only route."""
        is_frozen = frozen[self.text]
        return Routes(
            text=self.text[~is_frozen], image=self.image, num_positions=self.num_positions, frozen=self.text[is_frozen]
        )

    def merge(
        self, text_rows: torch.Tensor, image_rows: torch.Tensor, frozen_rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scatter each expert's rows back to their positions: (N_text, F), (N_image, F) → (B·T, F).

        Under autocast or with bf16-stored frozen text the two experts' rows may differ in dtype: the
        result has the wider one."""
        dtype = torch.promote_types(text_rows.dtype, image_rows.dtype)
        out = text_rows.new_zeros(self.num_positions, text_rows.shape[-1], dtype=dtype)
        out = out.index_copy(0, self.text, text_rows.to(dtype)).index_copy(0, self.image, image_rows.to(dtype))
        if frozen_rows is not None:
            out = out.index_copy(0, self.frozen, frozen_rows.to(dtype))
        return out


class ImageExpert(nn.Module):
    """The image modality's modules of one decoder layer (copies of the text layer's).

    For `ffn-only` there is no `self_attn`: the text attention projections are shared. `copy=False`
    takes `text_layer`'s modules as they are (a fresh layer of the same shapes: `lmfusion plan` does
    so under `FakeTensorMode`, where a deep copy would make tensors of another fake mode).
    """

    def __init__(self, text_layer: nn.Module, experts: str, copy: bool = True):
        super().__init__()
        for part in LAYER_PARTS:
            if part == "self_attn" and experts == "ffn-only":
                continue
            module = getattr(text_layer, part)
            setattr(self, part, _copy.deepcopy(module) if copy else module)


def rope_function(text_layer: nn.Module) -> Callable:
    """The architecture's own `apply_rotary_pos_emb`, found next to its attention class."""
    return sys.modules[type(text_layer.self_attn).__module__].apply_rotary_pos_emb


def _project(attn: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """q/k/v projection of (M, D) rows → (M, H·hd), with the base's per-head q/k norm if it has one."""
    out = getattr(attn, f"{name}_proj")(x)
    norm = getattr(attn, f"{name}_norm", None)
    if norm is not None:
        out = norm(out.unflatten(-1, (-1, attn.head_dim))).flatten(-2)  # (M, H, hd) per head
    return out


def routed_layer(
    text_layer: nn.Module,
    image_expert: ImageExpert | None,
    hidden: torch.Tensor,
    routes: Routes,
    shape: tuple[int, int],
    rope: tuple[torch.Tensor, torch.Tensor],
    attention: Attention,
    past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One decoder layer over flat hidden states (B·T, D).

    rope: (cos, sin), each (B, T, hd), from the base's rotary embedding at the batch's positions.
    past_kv: cached (keys, values), each (B, Hkv, S, hd), RoPE already applied.
    Returns the new hidden states (B·T, D) and this segment's (keys, values) (B, Hkv, T, hd).
    """
    B, T = shape
    text_attn = text_layer.self_attn
    image = image_expert if image_expert is not None else text_layer
    image_attn = getattr(image, "self_attn", text_attn)

    frozen = routes.frozen is not None
    # attention block: each expert normalises and projects its own tokens; a frozen prefix without a graph
    x_text = text_layer.input_layernorm(hidden[routes.text])  # (N_text, D)
    x_image = image.input_layernorm(hidden[routes.image])  # (N_image, D)
    x_frozen = _forward_only(text_layer.input_layernorm, hidden[routes.frozen]) if frozen else None  # (N_frozen, D)
    q, k, v = (
        routes.merge(
            _project(text_attn, name, x_text),
            _project(image_attn, name, x_image),
            _forward_only(_project, text_attn, name, x_frozen) if frozen else None,
        )  # (B·T, H·hd)
        .view(B, T, -1, text_attn.head_dim)
        .transpose(1, 2)  # (B, H, T, hd)
        for name in ("q", "k", "v")
    )
    cos, sin = rope
    q, k = rope_function(text_layer)(q, k, cos, sin)
    new_kv = (k, v)
    if past_kv is not None:
        k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)  # (B, Hkv, S+T, hd)
    attended = attention(q, k, v, scale=text_attn.scaling)  # (B, Hq, T, hd)
    attended = attended.transpose(1, 2).reshape(B * T, -1)  # (B·T, Hq·hd)
    hidden = hidden + routes.merge(
        text_attn.o_proj(attended[routes.text]),
        image_attn.o_proj(attended[routes.image]),
        _forward_only(text_attn.o_proj, attended[routes.frozen]) if frozen else None,
    )

    # feed-forward block
    text_ffn = lambda x: text_layer.mlp(text_layer.post_attention_layernorm(x))  # noqa: E731
    h_text = text_ffn(hidden[routes.text])
    h_image = image.mlp(image.post_attention_layernorm(hidden[routes.image]))
    h_frozen = _forward_only(text_ffn, hidden[routes.frozen]) if frozen else None
    return hidden + routes.merge(h_text, h_image, h_frozen), new_kv


def _forward_only(fn: Callable, *args):
    """`fn(*args)` without a graph: for a frozen prefix, whose values depend on no trainable weight."""
    with torch.no_grad():
        return fn(*args)


def reinitialise_(module: nn.Module, std: float) -> None:
    """Random init in the Llama style: Linear/Embedding N(0, std), biases 0, norm scales 1."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, std=std)
            if getattr(sub, "bias", None) is not None:
                nn.init.zeros_(sub.bias)
        elif "norm" in type(sub).__name__.lower() and isinstance(getattr(sub, "weight", None), nn.Parameter):
            nn.init.ones_(sub.weight)
