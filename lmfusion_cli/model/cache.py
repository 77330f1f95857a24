"""The per-layer key/value cache used by sampling: prefix encoding, text decoding, image denoising.

A cache holds, for every layer, the keys (RoPE already applied) and values of the positions seen so
far, plus their document ids (-1 = padding). Rows may hold prefixes of different lengths: they are
left-padded, and padding slots are never attended to (the mask's same-document predicate). Caches
are immutable values: `LMFusionModel.forward_segment(..., update_cache=True)` returns a new one, and
a denoising step (`update_cache=False`) leaves the one it read untouched, so the conditional and the
unconditional (CFG) branches each keep their own cache and can run as one batch (`KVCache.stack`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVCache:
    keys: tuple[torch.Tensor, ...]
    """Per layer, (B, Hkv, S, hd) keys with RoPE applied."""
    values: tuple[torch.Tensor, ...]
    """Per layer, (B, Hkv, S, hd) values."""
    document_ids: torch.Tensor
    """(B, S) long: document id of each cached slot; -1 = padding."""
    next_positions: torch.Tensor
    """(B,) long: the RoPE position the next segment of each row starts at."""

    @property
    def batch_size(self) -> int:
        return int(self.document_ids.shape[0])

    @property
    def length(self) -> int:
        """Slots per row S (padding included)."""
        return int(self.document_ids.shape[1])

    def append(
        self,
        keys: Sequence[torch.Tensor],
        values: Sequence[torch.Tensor],
        document_ids: torch.Tensor,
        next_positions: torch.Tensor,
    ) -> KVCache:
        """A new cache with a segment's (B, Hkv, T, hd) keys/values and (B, T) document ids added."""
        return KVCache(
            keys=tuple(torch.cat([old, new], dim=2) for old, new in zip(self.keys, keys)),
            values=tuple(torch.cat([old, new], dim=2) for old, new in zip(self.values, values)),
            document_ids=torch.cat([self.document_ids, document_ids], dim=1),
            next_positions=next_positions,
        )

    @classmethod
    def stack(cls, caches: Sequence[KVCache]) -> KVCache:
        """Concatenate caches along the batch, left-padding shorter ones (e.g. CFG cond + uncond)."""
        S = max(c.length for c in caches)

        def pad(x: torch.Tensor, fill: float) -> torch.Tensor:  # pad dim -2 (slots) on the left
            missing = S - x.shape[-2] if x.dim() == 4 else S - x.shape[-1]
            if missing == 0:
                return x
            shape = (*x.shape[:-2], missing, x.shape[-1]) if x.dim() == 4 else (x.shape[0], missing)
            filler = torch.full(shape, fill, dtype=x.dtype, device=x.device)
            return torch.cat([filler, x], dim=-2 if x.dim() == 4 else -1)

        num_layers = len(caches[0].keys)
        return cls(
            keys=tuple(torch.cat([pad(c.keys[i], 0) for c in caches]) for i in range(num_layers)),
            values=tuple(torch.cat([pad(c.values[i], 0) for c in caches]) for i in range(num_layers)),
            document_ids=torch.cat([pad(c.document_ids, -1) for c in caches]),
            next_positions=torch.cat([c.next_positions for c in caches]),
        )

    def select(self, rows: torch.Tensor) -> KVCache:
        """Rows `rows` (long, may repeat: e.g. `torch.arange(B).repeat_interleave(k)` for k samples)."""
        return KVCache(
            keys=tuple(k[rows] for k in self.keys),
            values=tuple(v[rows] for v in self.values),
            document_ids=self.document_ids[rows],
            next_positions=self.next_positions[rows],
        )
