"""Build the embedded default assets: tiny pretrained Llama LM + tokenizer, and tiny VAE (issue 4).

    python scripts/build_assets.py --out lmfusion_cli/assets            # the shipped build (make assets)
    python scripts/build_assets.py --out /tmp/assets --quick            # shortened build for the test (< 2 min)

Steps: generate the corpus (`scripts/lm_corpus.py`, documents from `lmfusion_cli/data/corpus.py`) → train a
byte-level BPE tokenizer → pretrain `LlamaForCausalLM` → measure held-out perplexity and greedy continuations → train `AutoencoderKL` on
shapes images → measure held-out PSNR → store the latent scale/shift in the VAE config → write
`tiny-lm/`, `tiny-vae/` (each atomically), `build_report.json` and the generated `README.md`.

This script owns orchestration and reporting; the recipes live in `scripts/tiny_lm.py` and
`scripts/tiny_vae.py`. Seeded and deterministic on CPU for a given thread count; the time caps only
cut a run short on a much slower machine (the report then says so)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_lm  # noqa: E402
import tiny_vae  # noqa: E402
import torch  # noqa: E402
from lm_corpus import build_corpus  # noqa: E402
from readme_assets import render_readme  # noqa: E402

from lmfusion_cli.common.atomic import atomic_dir, atomic_write_json, atomic_write_text, remove_stale_temps  # noqa: E402

FULL = {
    "num_captions": 40000,
    "num_general": 80000,
    "num_heldout": 400,
    "num_heldout_images": 500,
    "num_stat_images": 2000,
}
QUICK = {"num_captions": 600, "num_general": 1200, "num_heldout": 40, "num_heldout_images": 64, "num_stat_images": 128}
# The quick build exercises every code path with small widths (it must finish in < 2 min on a busy CPU).
QUICK_LM = {
    "steps": 12,
    "warmup_steps": 3,
    "batch_size": 8,
    "seq_len": 64,
    "vocab_size": 700,
    "hidden_size": 64,
    "num_layers": 2,
    "intermediate_size": 128,
}
QUICK_VAE = {
    "steps": 12,
    "decoder_steps": 6,
    "warmup_steps": 3,
    "batch_size": 8,
    "num_train_images": 256,
    "resolution": 32,
    "block_channels": (8, 16, 16),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Build the tiny LM, tokenizer and VAE of the embedded default.")
    p.add_argument("--out", type=Path, required=True, help="output folder (lmfusion_cli/assets for make assets)")
    p.add_argument("--quick", action="store_true", help="shortened build: tiny corpus, few steps (tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of corpus, images, init and batches")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on a shared 2-core machine 2 threads ran 3-5x slower per step)",
    )
    p.add_argument("--lm-steps", type=int, help="LM optimizer steps")
    p.add_argument("--lm-minutes", type=float, help="cap on LM training minutes")
    p.add_argument("--vae-steps", type=int, help="VAE optimizer steps")
    p.add_argument("--vae-minutes", type=float, help="cap on VAE training minutes (each phase)")
    p.add_argument("--vae-decoder-steps", type=int, help="decoder-only steps after the joint VAE phase")
    p.add_argument("--only", choices=("lm", "vae"), help="rebuild only one asset (the other is kept)")
    p.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        default=2,
        help="2: build the LM and the VAE in two processes side by side; 1: one after the other",
    )
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> tuple[dict, tiny_lm.LMSettings, tiny_vae.VAESettings]:
    sizes = QUICK if args.quick else FULL
    lm_over = dict(QUICK_LM) if args.quick else {}
    vae_over = dict(QUICK_VAE) if args.quick else {}
    for key, value in (("steps", args.lm_steps), ("max_minutes", args.lm_minutes)):
        if value is not None:
            lm_over[key] = value
    for key, value in (
        ("steps", args.vae_steps),
        ("max_minutes", args.vae_minutes),
        ("decoder_steps", args.vae_decoder_steps),
    ):
        if value is not None:
            vae_over[key] = value
    return sizes, tiny_lm.LMSettings(**lm_over), tiny_vae.VAESettings(**vae_over)


def build_lm(out: Path, sizes: dict, settings: tiny_lm.LMSettings, seed: int) -> dict:
    start = time.time()
    corpus = build_corpus(sizes["num_captions"], sizes["num_general"], sizes["num_heldout"], seed=seed)
    print(
        f"corpus: {len(corpus.train)} training documents; held-out sentences seen in training and "
        f"removed: {corpus.removed_overlap}",
        flush=True,
    )
    tokenizer = tiny_lm.train_tokenizer([d.text for d in corpus.train], settings.vocab_size)
    stream = tiny_lm.token_stream(tokenizer, corpus.train)
    print(f"tokenizer: {len(tokenizer)} tokens; corpus {len(stream)} tokens", flush=True)
    torch.manual_seed(seed)
    model = tiny_lm.build_model(settings, tokenizer)
    training = tiny_lm.pretrain(model, stream, settings, seed)
    ppl = {kind: round(tiny_lm.perplexity(model, tokenizer, docs), 4) for kind, docs in corpus.heldout.items()}
    samples = tiny_lm.greedy_samples(model, tokenizer)
    print(f"held-out perplexity {ppl}", flush=True)
    for text in samples.values():
        print(f"  greedy: {text!r}", flush=True)
    with atomic_dir(out / "tiny-lm", overwrite=True) as tmp:
        tmp.chmod(0o755)
        tiny_lm.save_lm(model, tokenizer, tmp)
    heldout_sents = {k: sum(len(d.sentences) for d in v) for k, v in corpus.heldout.items()}
    return {
        "settings": tiny_lm.settings_dict(settings),
        "training": training,
        "corpus": {
            "train_documents": len(corpus.train),
            "train_tokens": len(stream),
            "train_characters": sum(len(d.text) for d in corpus.train),
            "heldout_documents": {k: len(v) for k, v in corpus.heldout.items()},
            "heldout_sentences": heldout_sents,
            "heldout_sentences_removed_as_seen_in_training": corpus.removed_overlap,
        },
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_perplexity": ppl,
        "perplexity_bound_vocab_over_20": round(len(tokenizer) / 20, 2),
        "greedy_samples": samples,
        "minutes": round((time.time() - start) / 60, 2),
    }


def build_vae(out: Path, sizes: dict, settings: tiny_vae.VAESettings, seed: int) -> dict:
    start = time.time()
    train_images = tiny_vae.images_tensor(range(settings.num_train_images), seed, settings.resolution)
    heldout_seed = seed + tiny_vae.HELDOUT_SEED_OFFSET
    heldout_images = tiny_vae.images_tensor(range(sizes["num_heldout_images"]), heldout_seed, settings.resolution)
    torch.manual_seed(seed)
    vae = tiny_vae.build_vae(settings)
    ema, training = tiny_vae.train_vae(vae, train_images, settings, seed)
    quality = {"ema": tiny_vae.psnr_db(ema, heldout_images), "raw": tiny_vae.psnr_db(vae, heldout_images)}
    chosen = "ema" if quality["ema"]["psnr_mean_db"] >= quality["raw"]["psnr_mean_db"] else "raw"
    final = ema if chosen == "ema" else vae
    final.eval()
    decoder_training = tiny_vae.train_decoder(final, train_images, settings, seed)  # latents unchanged
    quality["decoder_phase"] = tiny_vae.psnr_db(final, heldout_images)
    shift, std = tiny_vae.latent_stats(final, train_images[: sizes["num_stat_images"]], seed)
    final.register_to_config(scaling_factor=1.0 / std, shift_factor=shift)
    raw_mean, raw_std = tiny_vae.latent_stats(final, heldout_images, seed + 1)
    scaled = {"mean": round((raw_mean - shift) / std, 4), "std": round(raw_std / std, 4)}
    print(
        f"VAE held-out PSNR {quality[chosen]} ({chosen} weights of the joint phase), "
        f"{quality['decoder_phase']} after the decoder phase; scaled held-out latents {scaled}",
        flush=True,
    )
    with atomic_dir(out / "tiny-vae", overwrite=True) as tmp:
        tmp.chmod(0o755)
        final.save_pretrained(tmp, safe_serialization=True)
    return {
        "settings": tiny_vae.settings_dict(settings),
        "training": training,
        "decoder_training": decoder_training,
        "saved_weights": chosen,
        "heldout_images": {"count": len(heldout_images), "seed": heldout_seed},
        "psnr": quality,
        "heldout_psnr_db": quality["decoder_phase"]["psnr_mean_db"],
        "latent_shape": [settings.latent_channels]
        + [settings.resolution // 2 ** (len(settings.block_channels) - 1)] * 2,
        "scaling_factor": 1.0 / std,
        "shift_factor": shift,
        "latent_stats_source": f"posterior samples of {sizes['num_stat_images']} training images",
        "heldout_scaled_latents": scaled,
        "parameters": sum(p.numel() for p in final.parameters()),
        "minutes": round((time.time() - start) / 60, 2),
    }


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    sizes, lm_settings, vae_settings = settings_from(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.only is None:
        # Only a whole build clears leftovers of crashed builds: a `--only` run may be the VAE half of a
        # `--jobs 2` build, started while the LM half already writes its temp folder next to it.
        remove_stale_temps(out)
    start = time.time()
    report = {
        "quick": args.quick,
        "seed": args.seed,
        "threads": args.threads,
        "jobs": args.jobs,
        "rebuilt": args.only,  # None: a whole build; "lm" / "vae": only that part, the other kept as it was
        "sizes": sizes,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
    }
    parts = [args.only] if args.only else ["lm", "vae"]
    child = None
    if args.only is None and args.jobs == 2:
        # The LM and the VAE share nothing (each seeds itself): build the VAE in a second process, side by side.
        raw = list(argv) if argv is not None else sys.argv[1:]
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *raw, "--only", "vae"])
        parts = ["lm"]
    minutes_by_part = {}
    for part in parts:
        part_start = time.time()
        if part == "lm":
            report["lm"] = build_lm(out, sizes, lm_settings, args.seed)
        else:
            report["vae"] = build_vae(out, sizes, vae_settings, args.seed)
        minutes_by_part[part] = round((time.time() - part_start) / 60, 2)
    if child is not None and child.wait() != 0:
        print(
            f"error: the VAE build process failed (exit code {child.returncode}); see its output above", file=sys.stderr
        )
        return 1
    report["minutes"] = round((time.time() - start) / 60, 2)
    # Parts not built here keep their figures: read the report as it is now (a `--only` run side by side,
    # or the VAE child, may have just written it).
    previous = json.loads((out / "build_report.json").read_text()) if (out / "build_report.json").is_file() else {}
    for part in ("lm", "vae"):
        if part not in report:
            report[part] = previous.get(part)
            if part in previous.get("minutes_by_part", {}):
                minutes_by_part[part] = previous["minutes_by_part"][part]
    report["minutes_by_part"] = minutes_by_part
    report["bytes"] = {name: folder_bytes(out / name) for name in ("tiny-lm", "tiny-vae") if (out / name).is_dir()}
    report["bytes_total"] = sum(report["bytes"].values())
    atomic_write_json(out / "build_report.json", report)
    atomic_write_text(out / "README.md", render_readme(report))
    print(f"done in {report['minutes']} min: {report['bytes_total'] / 1e6:.1f} MB in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
