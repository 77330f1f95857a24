"""A stand-alone class-conditional flow generator on the shapes latents (issue 23): does a transformer of the
tiny LM's size learn to draw the *prompted* shape at all, and what does it need?

    PYTHONPATH=$PWD .venv/bin/python scripts/shapes_flow_lab.py --latents work/base/latents --steps 4000

No LLM, no text, no mix: single-object items only, each conditioned on five learned label tokens (shape,
colour, size, position, background; dropped 10 % for classifier-free guidance) in front of the image's
p×p patch tokens, bidirectional attention, rectified flow with the demo's timestep shift, Euler sampling
with the same shift and CFG 3. What it reports is the CNN reader of `scripts/shape_probes.py` (trained on
the real latents; 1.00 on real test latents) reading the shape of latents generated for the held-out
items' labels: chance is 0.33. The LMFusion model's generator is this plus a frozen LM in front, so a
setting that fails here fails there.

`--arch unet` is a label-conditioned diffusers U-Net instead (labels summed into the timestep embedding).
With `--cond lm-mean | lm-last` its condition is the frozen tiny LM's final hidden states of the item's
caption (mean over `[BOS] caption`, or the last token; `--standardise` per feature), through a Linear, in
place of the labels: a prompt the model could hand the U-Net; `--cond lm-attn` pools every token's
standardised state with four learned attention queries and an MLP instead. `unet-up` / `unet-both` put that condition
into the package's `UNetPatcher` (a Linear bottleneck in place of the transformer), up path only or both
paths; `unet-xattn` / `unet-xattn-up` cross-attend to every caption token's hidden state (a diffusers
`UNet2DConditionModel`, as Stable Diffusion's U-Net reads its text encoder), in every block or in the up
path only. `--arch transformer --cond lm-tokens` puts every caption token's frozen-LM state (standardised,
through a Linear) in front of the image tokens in place of the labels, as DiT-style in-context conditioning;
`--cond tokens-learned` puts the caption's token ids there through a trained embedding (no LM). `--words
square=cat,triangle=door` swaps words in every caption first.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from shape_probes import attribute_labels, single_object_latents, trained_cnn_reader
from torch import nn

from lmfusion_cli.model.diffusion import shift_noise_level
from lmfusion_cli.model.patchers import _depth_to_space, _grid_to_tokens, _space_to_depth, _tokens_to_grid

ATTRIBUTES = ("shape", "colour", "size", "position", "background")


def label_ids(attrs: list[dict], vocab: dict) -> torch.Tensor:
    """(n, 5) ids of (attribute, value) pairs; new pairs get new ids."""
    rows = []
    for a in attrs:
        obj = a["objects"][0]
        values = (obj["shape"], obj["colour"], obj["size"], obj["position"], a["background"])
        rows.append([vocab.setdefault((k, v), len(vocab)) for k, v in zip(ATTRIBUTES, values, strict=True)])
    return torch.tensor(rows)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    angles = t[:, None] * 1000 * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], -1)


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """(grid², width) fixed 2-D position table (DiT / MAE): half the features encode the row, half the column,
    each as sines and cosines of `width // 4` frequencies; row-major, as `_grid_to_tokens` orders tokens."""
    quarter = width // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    pos = torch.arange(grid, dtype=torch.float32)
    angles = pos[:, None] * freq[None]  # (grid, quarter)
    one_axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # (grid, width / 2)
    rows = one_axis[:, None, :].expand(grid, grid, -1)
    cols = one_axis[None, :, :].expand(grid, grid, -1)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, width)


class Generator(nn.Module):
    def __init__(
        self,
        num_labels: int,
        width: int,
        depth: int,
        patch: int,
        head: str,
        channels: int = 4,
        side: int = 16,
        position: str = "learned",
        tokens: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.patch, self.grid, self.side, self.width = patch, side // patch, side, width
        self.labels = nn.Embedding(num_labels + 1, width)  # the last id is the dropped label
        # `--cond lm-tokens`: the condition is every token state of the caption (a fixed table, rows padded
        # to their lengths) through a Linear, in front of the image tokens, padding masked
        self.tokens = None
        if tokens is not None:
            table, lengths = tokens
            self.register_buffer("token_table", table)
            self.register_buffer("token_lengths", lengths)
            # float states: a Linear of each; token ids (`--cond tokens-learned`): a trained embedding
            self.tokens = (
                nn.Embedding(int(table.max()) + 1, width)
                if not table.is_floating_point()
                else nn.Linear(table.shape[-1], width)
            )
        self.proj_in = nn.Linear(channels * patch * patch, width)
        self.position = nn.Parameter(torch.zeros(self.grid**2, width))
        # `sincos`: DiT's fixed 2-D sine-cosine table added under the learned one (which starts at zero)
        fixed = sincos_2d(self.grid, width) if position == "sincos" else torch.zeros(self.grid**2, width)
        self.register_buffer("fixed_position", fixed, persistent=False)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        layer = nn.TransformerEncoderLayer(
            width, 4, int(2.7 * width), 0.0, batch_first=True, norm_first=True, activation="gelu"
        )
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        out_channels = 64 if head == "conv" else channels
        self.proj_out = nn.Linear(width, out_channels * patch * patch)
        self.conv = (
            nn.Sequential(nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, channels, 3, padding=1))
            if head == "conv"
            else None
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(_space_to_depth(x, self.patch)) + self.position + self.fixed_position
        h = h + self.time(timestep_features(t, self.width))[:, None]
        if self.tokens is not None:
            ids = labels[:, 0]
            prefix = self.tokens(self.token_table[ids])
            pad = torch.arange(prefix.shape[1])[None] >= self.token_lengths[ids][:, None]
            mask = torch.cat([pad, torch.zeros(len(ids), h.shape[1], dtype=torch.bool)], 1)
            out = self.transformer(torch.cat([prefix, h], 1), src_key_padding_mask=mask)
            h = self.norm(out)[:, prefix.shape[1] :]
        else:
            h = self.norm(self.transformer(torch.cat([self.labels(labels), h], 1)))[:, labels.shape[1] :]
        out = _depth_to_space(self.proj_out(h), self.patch, self.grid)
        return out if self.conv is None else self.conv(out)


@torch.no_grad()
def caption_features(captions: list[str], lm_path: str, pool: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen LM's final hidden states (after its final norm) of `[BOS] caption` for every caption, then of
    `[BOS]` alone (the null prompt) as the last row: pooled over the tokens ("mean") or taken at the last one
    ("last"), (n + 1, D); or every token's ("tokens"), (n + 1, L, D) zero-padded on the right; or the token
    ids themselves ("ids", no LM run), (n + 1, L). Also the number of tokens of each row, (n + 1,)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_path)
    ids = [[tok.bos_token_id] + (tok(c, add_special_tokens=False)["input_ids"] if c else []) for c in [*captions, None]]
    if pool == "ids":
        lengths = torch.tensor([len(r) for r in ids])
        return nn.utils.rnn.pad_sequence([torch.tensor(r) for r in ids], batch_first=True), lengths
    lm = AutoModelForCausalLM.from_pretrained(lm_path).eval()

    def encode(row: list[int]) -> torch.Tensor:
        h = lm(torch.tensor([row]), output_hidden_states=True).hidden_states[-1][0]
        return h if pool == "tokens" else h.mean(0) if pool == "mean" else h[-1]

    rows = [encode(r) for r in ids]
    lengths = torch.tensor([len(r) if pool == "tokens" else 1 for r in rows])
    if pool == "tokens":
        return nn.utils.rnn.pad_sequence(rows, batch_first=True), lengths
    return torch.stack(rows), lengths


def standardised(table: torch.Tensor, lengths: torch.Tensor, train_rows: int) -> torch.Tensor:
    """Each feature of `table` ((n, D), or (n, L, D) padded to `lengths`) standardised by the mean and standard
    deviation of the first `train_rows` rows' (valid) vectors; padding stays zero."""
    valid = torch.arange(table.shape[1])[None] < lengths[:, None] if table.dim() == 3 else torch.ones_like(table[:, 0])
    vectors = table[:train_rows][valid[:train_rows].bool()]  # (vectors, D)
    mu, sd = vectors.mean(0), vectors.std(0).clamp(min=1e-6)
    return ((table - mu) / sd) * (valid[..., None] if table.dim() == 3 else 1)


class LinearCondition(nn.Module):
    """Condition ids (n, 1) → a Linear map of their rows of a fixed feature table: (n, E)."""

    def __init__(self, table: torch.Tensor, width: int):
        super().__init__()
        self.register_buffer("table", table)
        self.proj = nn.Linear(table.shape[1], width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table[ids[:, 0]])


class AttentionPoolCondition(nn.Module):
    """Condition ids (n, 1) → an attention pool of their rows of a token table (n_rows, L, D) padded to
    `lengths`: four learned queries over the tokens, their outputs concatenated and through an MLP, (n, E)
    (Imagen's attention pooling of its text embedding)."""

    def __init__(self, tokens: torch.Tensor, lengths: torch.Tensor, width: int, heads: int = 4, key_width: int = 64):
        super().__init__()
        self.register_buffer("tokens", tokens)
        self.register_buffer("lengths", lengths)
        self.queries = nn.Parameter(torch.randn(heads, key_width) / key_width**0.5)
        self.keys, self.values = nn.Linear(tokens.shape[-1], key_width), nn.Linear(tokens.shape[-1], key_width)
        self.mlp = nn.Sequential(nn.Linear(heads * key_width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids[:, 0]
        h = self.tokens[ids]  # (n, L, D)
        mask = torch.arange(h.shape[1], device=h.device)[None] < self.lengths[ids][:, None]
        scores = torch.einsum("qw,nlw->nql", self.queries, self.keys(h)).masked_fill(~mask[:, None], float("-inf"))
        return self.mlp(torch.einsum("nql,nlw->nqw", scores.softmax(-1), self.values(h)).flatten(1))


class CrossAttentionUNet(nn.Module):
    """A diffusers `UNet2DConditionModel` (widths 64/128, cross-attention at both levels and in the middle)
    attending to the frozen LM's final hidden states of every caption token, as Stable Diffusion's U-Net
    attends to its text encoder's."""

    def __init__(
        self, tokens: torch.Tensor, lengths: torch.Tensor, up_only: bool = False, side: int = 16, channels: int = 4
    ):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.side = side
        self.register_buffer("tokens", tokens)
        self.register_buffer("lengths", lengths)
        self.unet = UNet2DConditionModel(
            sample_size=side,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=(64, 128),
            layers_per_block=1,
            down_block_types=("DownBlock2D",) * 2 if up_only else ("CrossAttnDownBlock2D",) * 2,
            mid_block_type=None if up_only else "UNetMidBlock2DCrossAttn",
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=tokens.shape[-1],
            attention_head_dim=32,
            norm_num_groups=32,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ids = labels[:, 0]
        mask = torch.arange(self.tokens.shape[1])[None] < self.lengths[ids][:, None]
        return self.unet(x, t * 1000, encoder_hidden_states=self.tokens[ids], encoder_attention_mask=mask).sample


class UNetGenerator(nn.Module):
    """A label-conditioned diffusers U-Net (no transformer): the five label embeddings are summed and added to
    the timestep embedding (`class_embed_type="identity"`), as class-conditional diffusion U-Nets do. With
    `condition` (a module: ids (n, 1) → (n, 4·widths[0])) the condition is instead that of the frozen LM's
    caption states (`LinearCondition`, as SDXL adds its pooled text embedding to the timestep's, or
    `AttentionPoolCondition`)."""

    def __init__(
        self,
        num_labels: int,
        channels: int = 4,
        side: int = 16,
        widths: tuple[int, ...] = (64, 128),
        condition: nn.Module | None = None,
    ):
        super().__init__()
        from diffusers import UNet2DModel

        self.side = side
        self.labels = condition or nn.EmbeddingBag(num_labels + 1, widths[0] * 4, mode="sum")
        self.unet = UNet2DModel(
            sample_size=side,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=widths,
            layers_per_block=1,
            down_block_types=("DownBlock2D",) * len(widths),
            up_block_types=("UpBlock2D",) * len(widths),
            class_embed_type="identity",
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t * 1000, class_labels=self.labels(labels)).sample


class UpConditionedUNet(nn.Module):
    """The LMFusion model's `UNetPatcher` (paper widths here 64/128), with a Linear bottleneck in place of the
    transformer and the condition added to the timestep embedding of the *up* path only: what the model can
    compute in one pass, since the prompt's final hidden states exist only after the transformer."""

    def __init__(self, condition: nn.Module, both: bool = False, channels: int = 4, side: int = 16):
        super().__init__()
        from types import SimpleNamespace

        from lmfusion_cli.model.patchers import UNetPatcher

        cfg = SimpleNamespace(
            unet_channels=[64, 128], unet_layers_per_block=1, latent_size=side, patch_size=2, latent_channels=channels
        )
        self.side, self.both = side, both
        self.patcher = UNetPatcher(cfg, 256)
        self.condition = condition  # ids (n, 1) → (n, 256)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = self.patcher
        cond = self.condition(labels)
        temb = p._temb(t * 1000, x.dtype)
        h = p.conv_in(x)
        skips = (h,)
        for block in p.down_blocks:
            h, residuals = block(h, temb + cond if self.both else temb)
            skips += residuals
        h = p.from_tokens(p.to_tokens(_grid_to_tokens(h)))
        h = _tokens_to_grid(h, p.side)
        for block in p.up_blocks:
            residuals, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            h = block(h, residuals, temb + cond)
        return p.conv_out(nn.functional.silu(p.norm_out(h)))


@torch.no_grad()
def sample(gen: nn.Module, labels: torch.Tensor, null: int, steps: int, shift: float, cfg: float) -> torch.Tensor:
    gen.eval()
    torch.manual_seed(123)
    x = torch.randn(len(labels), 4, gen.side, gen.side)
    levels = shift_noise_level(torch.linspace(1, 0, steps + 1), shift)
    for i in range(steps):
        t = torch.full((len(labels),), float(levels[i]))
        v_cond, v_null = gen(x, t, labels), gen(x, t, torch.full_like(labels, null))
        x = x + (levels[i + 1] - levels[i]) * (v_null + cfg * (v_cond - v_null))
    gen.train()
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--name", default="lab")
    ap.add_argument(
        "--arch",
        choices=("transformer", "unet", "unet-up", "unet-both", "unet-xattn", "unet-xattn-up"),
        default="transformer",
    )
    ap.add_argument(
        "--cond",
        choices=("label", "lm-mean", "lm-last", "lm-attn", "lm-tokens", "tokens-learned"),
        default="label",
        help="condition: the five labels; the frozen tiny LM's caption states (mean, last token, attention pool: U-Net; every token: transformer); or the caption's token ids through a trained embedding (transformer)",
    )
    ap.add_argument("--lm", default="lmfusion_cli/assets/tiny-lm")
    ap.add_argument("--standardise", action="store_true", help="standardise the LM features per dimension")
    ap.add_argument("--words", default="", help="caption word swaps, e.g. square=cat,triangle=door")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--head", choices=("linear", "conv"), default="linear")
    ap.add_argument(
        "--position", choices=("learned", "sincos"), default="learned", help="transformer: + a fixed 2-D sincos table"
    )
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--shift", type=float, default=6.0, help="timestep shift, training and sampling")
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--eval-at", default="", help="extra steps to score at (comma-separated)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="initialisation, batches and training noise")
    args = ap.parse_args()
    if args.cond in ("lm-tokens", "tokens-learned") and args.arch != "transformer":
        ap.error(f"--cond {args.cond} conditions --arch transformer only")
    if args.cond == "lm-attn" and args.arch != "unet":
        ap.error("--cond lm-attn conditions --arch unet only")
    torch.set_num_threads(args.threads)

    readers = {a: trained_cnn_reader(args.latents, a) for a in ("shape", "colour", "background")}
    x, attrs, captions = single_object_latents(args.latents, "train")
    xt, attrs_t, captions_t = single_object_latents(args.latents, "test,val")
    if args.words:  # e.g. square=cat,triangle=door: other words for the shapes in every caption
        swaps = dict(pair.split("=") for pair in args.words.split(","))
        captions, captions_t = (
            [" ".join(swaps.get(w, w) for w in c.split(" ")) for c in group] for group in (captions, captions_t)
        )
    vocab: dict = {}
    y, yt = label_ids(attrs, vocab), label_ids(attrs_t, vocab)
    truth = {a: attribute_labels(attrs_t, a, classes) for a, (_, _, classes) in readers.items()}
    null = len(vocab)
    majority = float(torch.bincount(truth["shape"]).max()) / len(yt)  # a reader that reads one shape always
    print(
        json.dumps(
            {
                "train_items": len(y),
                "test_items": len(yt),
                "readers_on_real": {a: round(r[1], 3) for a, r in readers.items()},
                "chance": round(majority, 3),
            }
        ),
        flush=True,
    )

    torch.manual_seed(args.seed)
    lm_condition = args.arch.startswith("unet-xattn") or args.cond != "label"
    if lm_condition:
        # one condition id per item (train, then held-out), the last id the null prompt
        tokens = args.arch.startswith("unet-xattn") or args.cond in ("lm-attn", "lm-tokens")
        pool = "ids" if args.cond == "tokens-learned" else "tokens" if tokens else args.cond.split("-")[1]
        table, lengths = caption_features(captions + captions_t, args.lm, pool)
        # per feature, by the training captions' statistics
        if args.standardise or args.cond in ("lm-attn", "lm-tokens"):
            table = standardised(table, lengths, len(captions))
        y = torch.arange(len(captions))[:, None]
        yt = torch.arange(len(captions), len(captions) + len(captions_t))[:, None]
        null = len(table) - 1
    if args.arch.startswith("unet-xattn"):
        gen = CrossAttentionUNet(table, lengths, up_only=args.arch == "unet-xattn-up")
    elif args.arch == "transformer" and args.cond in ("lm-tokens", "tokens-learned"):
        gen = Generator(
            0, args.width, args.depth, args.patch, args.head, position=args.position, tokens=(table, lengths)
        )
    elif lm_condition and args.cond == "lm-attn":
        gen = UNetGenerator(0, condition=AttentionPoolCondition(table, lengths, 256))
    elif lm_condition and args.arch == "unet":
        gen = UNetGenerator(0, condition=LinearCondition(table, 256))
    elif lm_condition:
        gen = UpConditionedUNet(LinearCondition(table, 256), both=args.arch == "unet-both")
    elif args.arch == "unet":
        gen = UNetGenerator(len(vocab))
    else:
        gen = Generator(len(vocab), args.width, args.depth, args.patch, args.head, position=args.position)
    opt = torch.optim.AdamW(gen.parameters(), lr=args.lr, weight_decay=0.1)

    def lr_factor(k: int) -> float:  # 40 warmup steps, cosine to 5 %
        return min(1.0, (k + 1) / 40) * (0.05 + 0.475 * (1 + math.cos(math.pi * min(k, args.steps) / args.steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    score_at = {int(s) for s in args.eval_at.split(",") if s} | {args.steps}
    curve, t0 = {}, time.time()
    for k in range(1, args.steps + 1):
        b = torch.randint(0, len(x), (args.batch,))
        x0, labels = x[b], y[b].clone()
        labels[torch.rand(len(b)) < 0.1] = null
        t = shift_noise_level(torch.rand(len(b)), args.shift)
        noise = torch.randn_like(x0)
        xt_ = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        loss = (gen(xt_, t, labels) - (noise - x0)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()
        sched.step()
        if k in score_at:
            generated = sample(gen, yt, null, args.sample_steps, args.shift, args.cfg)
            with torch.no_grad():
                curve[k] = {
                    a: round(float((reader(generated).argmax(-1) == truth[a]).float().mean()), 3)
                    for a, (reader, _, _) in readers.items()
                }
            print(
                json.dumps({"name": args.name, "step": k, "read": curve[k], "s": round(time.time() - t0)}), flush=True
            )
    print(json.dumps({"name": args.name, "settings": vars(args), "read_by_step": curve}), flush=True)


if __name__ == "__main__":
    main()
