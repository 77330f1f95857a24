"""`patcher: conv` (issue 23): ResNet blocks at full latent resolution each way, no skip around the
transformer. Its tokens are the linear patcher's grid (row-major, one per p×p cell), and each token /
output pixel is drawn from its neighbourhood only (3×3 convolutions, no normalisation: nothing carries a
per-image statistic of x_t), so a wrong reshape or a global path shows as a far effect."""

from __future__ import annotations

import pytest
import torch

from lmfusion_cli.model import LMFusionConfig
from lmfusion_cli.model.patchers import ConvPatcher, LinearPatcher


def _config(**over) -> LMFusionConfig:
    return LMFusionConfig(**{"patcher": "conv", "latent_size": 16, "patch_size": 2, "unet_channels": (8,), **over})


def test_tokens_are_row_major_cells_like_the_linear_patcher():
    """One latent pixel at (y, x) changes the linear patcher's token (y//p)·s + x//p only."""
    cfg = _config(patcher="linear")
    patcher = LinearPatcher(cfg, hidden_size=32).eval()
    latents, t = torch.randn(1, 4, 16, 16), torch.tensor([500.0])
    base, _ = patcher.encode(latents, t)
    bumped = latents.clone()
    bumped[0, 1, 9, 4] += 1.0
    changed = (patcher.encode(bumped, t)[0] - base).abs().amax(-1)[0].nonzero().flatten().tolist()
    assert changed == [(9 // 2) * 8 + 4 // 2]


@pytest.mark.parametrize("blocks", [1, 2])
def test_conv_patcher_is_local_both_ways_and_has_no_skip(blocks):
    cfg = _config(unet_layers_per_block=blocks)
    torch.manual_seed(0)
    patcher = ConvPatcher(cfg, hidden_size=32).eval()
    latents, t = torch.randn(2, 4, 16, 16), torch.tensor([500.0, 20.0])
    tokens, skips = patcher.encode(latents, t)
    assert tokens.shape == (2, 64, 32) and skips == ()
    reach = 1 + 2 * blocks  # conv-in + two 3×3 convs per ResNet block, in latent pixels
    # encode: a bump at latent pixel (y, x) reaches exactly the tokens whose cells lie within `reach`
    y, x = 7, 10
    bumped = latents.clone()
    bumped[0, :, y, x] += 10.0
    diff = (patcher.encode(bumped, t)[0] - tokens).abs().amax(-1)
    reached = {int(i) for i in diff[0].nonzero().flatten()}
    near = {
        r * 8 + c
        for r in range(8)
        for c in range(8)
        if min(abs(2 * r + dy - y) for dy in (0, 1)) <= reach and min(abs(2 * c + dx - x) for dx in (0, 1)) <= reach
    }
    assert reached == near, (reached, near)
    assert not diff[1].any()  # the other image of the batch is untouched
    # decode: the output depends on the tokens and timestep only; one token reaches its cell's neighbourhood
    out = patcher.decode(tokens, t, skips)
    assert out.shape == latents.shape
    moved = tokens.clone()
    moved[0, 3 * 8 + 5] += 10.0
    effect = (patcher.decode(moved, t, skips) - out).abs().amax(1)[0]
    ys, xs = effect.nonzero(as_tuple=True)
    reach_out = 1 + 2 * blocks  # ResNet blocks + conv-out
    box = (max(6 - reach_out, 0), min(7 + reach_out, 15), max(10 - reach_out, 0), min(11 + reach_out, 15))
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == box


def test_conv_patcher_width_and_blocks_come_from_the_unet_options():
    patcher = ConvPatcher(_config(unet_channels=(24,), unet_layers_per_block=2), hidden_size=32)
    assert patcher.conv_in.out_channels == 24 and len(patcher.blocks_in) == len(patcher.blocks_out) == 2
    with pytest.raises(ValueError, match="must be positive"):
        _config(unet_channels=(0,))
    with pytest.raises(ValueError, match="must be positive"):
        _config(unet_layers_per_block=0)
    LMFusionConfig(patcher="linear", latent_size=16, unet_channels=(0,))  # unused by the linear patcher
