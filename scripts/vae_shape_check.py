"""Can the tiny VAE carry shape? The shapes pixel checker on VAE reconstructions, and a longer-trained VAE.

    PYTHONPATH=$PWD .venv/bin/python scripts/vae_shape_check.py --vae lmfusion_cli/assets/tiny-vae
    PYTHONPATH=$PWD .venv/bin/python scripts/vae_shape_check.py --finetune-steps 1500 --part decoder --out work/vae-ft

Reconstruction (posterior mean → decode) of held-out shapes images (the asset build's held-out seed), scored
by `evaluation/shapes_checker.py` against the items' attributes: the best any generator decoding through
this VAE can score. With `--finetune-steps` the VAE is trained further (scripts/tiny_vae.py's loss: MSE +
L1 + tiny KL, warmup + cosine) on the asset build's training images, `--part decoder` keeping the encoder
(and so every latent cache) unchanged, and scored every `--every` steps. The saved VAE keeps the
original scaling/shift factors when only the decoder changed and recomputes them otherwise."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_vae  # noqa: E402

from lmfusion_cli.common.vae import load_vae  # noqa: E402
from lmfusion_cli.data import shapes  # noqa: E402
from lmfusion_cli.evaluation.shapes_checker import score_images  # noqa: E402


@torch.no_grad()
def checker_on_reconstructions(vae, n: int, seed: int, resolution: int = 64) -> dict:
    items = [shapes.make_item(i, seed=seed, resolution=resolution) for i in range(n)]
    x = tiny_vae.to_model_range(tiny_vae.images_tensor(range(n), seed, resolution))
    recon = torch.cat([vae.decode(vae.encode(x[i : i + 50]).latent_dist.mean).sample for i in range(0, n, 50)])
    u8 = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    result = score_images(list(u8), [it.attributes for it in items])
    return {k: round(v, 3) for k, v in result["accuracy"].items()}


def finetune(vae, steps: int, part: str, lr: float, every: int, eval_n: int, eval_seed: int, seed: int):
    """Train `vae` further (the asset build's loop for `decoder`, `tiny_vae.train_decoder`; all of it for
    `all`), scoring held-out reconstructions every `every` steps; returns the training images."""
    s = tiny_vae.VAESettings(steps=steps, lr=lr, decoder_steps=steps, decoder_lr=lr)
    images = tiny_vae.images_tensor(range(s.num_train_images), seed, s.resolution)
    start = time.process_time()

    def report(step: int, mse: float) -> None:
        if (step + 1) % every == 0 or step + 1 == steps:
            vae.eval()
            acc = checker_on_reconstructions(vae, eval_n, eval_seed)
            psnr = tiny_vae.psnr_db(vae, tiny_vae.images_tensor(range(eval_n), eval_seed, s.resolution))
            row = {"step": step + 1, "cpu_s": round(time.process_time() - start), "mse": round(mse, 5)}
            print(json.dumps({**row, "psnr_db": psnr["psnr_mean_db"], "checker": acc}), flush=True)
            vae.train()

    if part == "decoder":
        tiny_vae.train_decoder(vae, images, s, seed, on_step=report)
        return images
    vae.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed + 7)
    tiny_vae.optimise(
        vae, list(vae.parameters()), images, s, gen, steps, lambda step: tiny_vae.lr_at(step, s), "VAE", report
    )
    vae.eval()
    vae.requires_grad_(False)
    return images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vae", default="lmfusion_cli/assets/tiny-vae")
    ap.add_argument("--items", type=int, default=300, help="held-out images scored")
    ap.add_argument("--seed", type=int, default=0, help="the asset build's seed")
    ap.add_argument("--finetune-steps", type=int, default=0)
    ap.add_argument("--part", choices=("decoder", "all"), default="decoder")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--out", type=Path, help="save the fine-tuned VAE here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    eval_seed = args.seed + tiny_vae.HELDOUT_SEED_OFFSET
    vae = load_vae(args.vae)
    print(json.dumps({"step": 0, "checker": checker_on_reconstructions(vae, args.items, eval_seed)}), flush=True)
    if args.finetune_steps:
        images = finetune(vae, args.finetune_steps, args.part, args.lr, args.every, args.items, eval_seed, args.seed)
        if args.part == "all":  # new encoder: new latent statistics
            shift, std = tiny_vae.latent_stats(vae, images[:2000], args.seed)
            vae.register_to_config(scaling_factor=1.0 / std, shift_factor=shift)
        if args.out:
            vae.save_pretrained(args.out, safe_serialization=True)
            print(f"saved {args.out}", flush=True)


if __name__ == "__main__":
    main()
