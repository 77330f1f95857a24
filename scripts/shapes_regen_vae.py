"""Held-out shapes generation of a checkpoint decoded by another VAE *decoder* (issue 23's VAE diagnosis).

    PYTHONPATH=$PWD .venv/bin/python scripts/shapes_regen_vae.py --checkpoint RUN --vae work/vae-dec --out OUT

`lmfusion evaluate` refuses a VAE whose weights differ from the one the run was trained with, rightly. A
VAE whose encoder, quant_conv and latent scaling are identical to it (`scripts/vae_shape_check.py --part
decoder`) decodes the same latents into sharper pixels; this script checks that identity, puts the new
decoder into the run's codec and runs the shapes suite's generation half (same items, seeds, sampler and
CFG as `evaluate --suite shapes`'s defaults unless overridden). Captions do not depend on the decoder."""

from __future__ import annotations

import argparse
import json

import torch

from lmfusion_cli.common.vae import load_vae
from lmfusion_cli.evaluation.shapes_suite import run_shapes_suite
from lmfusion_cli.sampling import as_generate_fn
from lmfusion_cli.sampling.loading import load_for_sampling

ENCODER_PREFIXES = ("encoder.", "quant_conv.")


def swap_decoder(codec_vae: torch.nn.Module, other: torch.nn.Module) -> None:
    """Copy `other`'s decoder weights into `codec_vae` after checking that their encoders are identical."""
    mine, theirs = codec_vae.state_dict(), other.state_dict()
    for name, tensor in mine.items():
        if name.startswith(ENCODER_PREFIXES) and not torch.equal(tensor, theirs[name]):
            raise SystemExit(f"error: --vae has another encoder ({name} differs); it would change the latents")
    codec_vae.load_state_dict({k: v for k, v in theirs.items()}, strict=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--vae", required=True, help="a VAE with the run's encoder and another decoder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-items", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1000, help="evaluate's default shapes seed")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--sampler", default="dpm-solver")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_for_sampling(args.checkpoint)
    swap_decoder(loaded.codec.vae, load_vae(args.vae))
    generate = as_generate_fn(
        loaded.model,
        tokenizer=loaded.tokenizer,
        vae=loaded.codec,
        cfg_scale=args.cfg_scale,
        steps=args.steps,
        sampler=args.sampler,
        batch_size=8,
        cache=True,
    )
    metrics, _ = run_shapes_suite(args.out, args.num_items, args.seed, 64, generate_fn=generate)
    print(json.dumps({k: round(v, 3) for k, v in metrics["generation"]["accuracy"].items()}))


if __name__ == "__main__":
    main()
