"""A fake training run for the evaluate-stage tests, built in seconds from configs (nothing downloaded).

Layout as `lmfusion train` writes it: `run/checkpoints/step-N/{model/, manifest.json}`, `run/manifest.json`
recording the base and the latent VAE, `run/config.yaml`. The base is a 2-layer width-32 Llama with a
word-level tokenizer (shapes words + the image tokens) saved to `base/`; the VAE is a tiny random
`AutoencoderKL` (32 px images ↔ 4×8×8 latents) saved to `vae/`. The image experts are perturbed
so they differ from the text modules; the text modules stay frozen (or, with `freeze_text=False`,
are perturbed too: a model whose text path no longer equals its base)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderKL
from tokenizers import Tokenizer, models, pre_tokenizers

from lmfusion_cli.common.manifest import file_entry, write_manifest
from lmfusion_cli.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES
from lmfusion_cli.model import LMFusionModel, checkpoint, resolve_boi_eoi

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|begin_of_image|>", "<|end_of_image|>"]
WORDS = [
    "a",
    "an",
    "the",
    "on",
    "of",
    "in",
    "is",
    "and",
    "background",
    "image",
    "shape",
    "with",
    ".",
    "one",
    "two",
    "three",
    "four",
    "five",
    "plus",
    "sky",
    "grass",
]


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    words: list[str] = []
    for group in (COLOURS, SHAPES, SIZES, POSITIONS, WORDS):
        for name in group:
            for w in str(name).replace("-", " ").split():
                if w not in words:
                    words.append(w)
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(SPECIALS + words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )


def make_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
    ).eval()


def make_fused(base_dir: Path, tokenizer, freeze_text: bool = True, seed: int = 0) -> LMFusionModel:
    boi, eoi = resolve_boi_eoi(tokenizer)
    model = LMFusionModel.from_base(
        str(base_dir),
        latent_size=8,
        latent_channels=4,
        patch_size=2,
        unet_channels=(16, 32),
        boi_id=boi,
        eoi_id=eoi,
        freeze_text=freeze_text,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def save_step(run: Path, step: int, model: LMFusionModel) -> Path:
    step_dir = run / "checkpoints" / f"step-{step:08d}"
    step_dir.mkdir(parents=True)
    checkpoint.save_trainable(model, step_dir / "model")
    files = {f"model/{p.name}": file_entry(p) for p in sorted((step_dir / "model").iterdir())}
    write_manifest(step_dir, "training-checkpoint", complete=True, files=files, step=step)
    return step_dir


def build_fake_run(root: Path) -> Path:
    """`root/run` (one complete checkpoint at step 3) with `root/base` and `root/vae` beside it."""
    from lmfusion_cli.common.vae import vae_identity

    tok = make_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    vae = make_vae()
    vae.save_pretrained(root / "vae")
    run = root / "run"
    save_step(run, 3, make_fused(root / "base", tok))
    identity = {**vae_identity(str(root / "vae"), vae), "scaling_factor": 1.3, "shift_factor": 0.1}
    write_manifest(run, "training-run", complete=False, trains={"base": str(root / "base"), "latent_vae": identity})
    (run / "config.yaml").write_text("base:\n  path: x\n  tokenizer: null\n")
    return run
