"""How many text-only documents make half the training tokens? (issue 23: the `transfusion` ablation variant)

    PYTHONPATH=. python scripts/ablation_token_mix.py --latents work/ablation/latents \
        [--config pipelines/configs/ablation/tiny.yaml] [--num 4000] [--share 0.5]

Transfusion trains on text and images, half the tokens each. The `transfusion` variant of
`pipelines/ablation.sh` gets there with `data.text_only_fraction`: this script lays out `--num` samples
of each kind exactly as training does (the LMFusion workload's own `_example`, the config's tokenizer,
the cache's image size) and counts their positions (text tokens, BOI/EOI and image tokens; what
training's `tokens` counts). With L_t the mean length of a text-only document, L_i of an interleaved
example and L_r of a caption-first / image-first example (the config's generation fraction and caption
dropout), and the image examples mixed as in the config (interleaved share
i0 / (1 − t0) of them), text-only documents take a share s of the tokens when

    t·L_t = s/(1−s) · (1−t)·L_img,   L_img = q·L_i + (1−q)·L_r,  q = i0 / (1 − t0)
    t = s·L_img / (s·L_img + (1−s)·L_t)

Prints the measured lengths and the fractions to set (text_only_fraction t, interleaved_fraction q·(1−t)).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def measure(config_path: str, latents: str, num: int, seed: int = 0) -> dict[str, float]:
    """Mean positions per sample of each task (text-only, interleaved, caption-first/image-first mix)."""
    import torch

    from lmfusion_cli.common.configs import load_config
    from lmfusion_cli.training.build import default_source
    from lmfusion_cli.training.config import TrainRunConfig
    from lmfusion_cli.training.lmfusion_workload import build_lmfusion_workload
    from lmfusion_cli.training.loader import INTERLEAVED, TEXT_ONLY, SampleStream

    config = load_config(TrainRunConfig, config_path, [f"data.latents={latents}"])
    source = default_source(config.data.latents, config.data.train_split)
    workload = build_lmfusion_workload(config, source, torch.device("cpu"))
    lengths: dict[str, list[int]] = {"text-only": [], "interleaved": [], "caption/image": []}
    for name, text_only, interleaved in (("text-only", 1.0, 0.0), ("interleaved", 0.0, 1.0), ("caption/image", 0, 0)):
        stream = SampleStream(
            source, seed, config.data.generation_fraction, config.data.caption_dropout, interleaved, text_only
        )
        for position in range(num):
            sample = stream.sample_at(position)
            if name == "interleaved" and sample.task != INTERLEAVED:
                continue  # an item without a document (prepare without --interleaved)
            assert (sample.task == TEXT_ONLY) == (name == "text-only")
            lengths[name].append(len(workload._example(sample)))
    if not lengths["interleaved"]:
        raise SystemExit(f"error: {latents} has no interleaved documents; prepare the shapes set with --interleaved")
    return {name: sum(v) / len(v) for name, v in lengths.items()}


def fractions(means: dict[str, float], text_only0: float, interleaved0: float, share: float) -> dict[str, float]:
    """text_only_fraction t for a `share` of text-only tokens, the image examples mixed as in the config."""
    q = interleaved0 / (1.0 - text_only0)
    image = q * means["interleaved"] + (1 - q) * means["caption/image"]
    t = share * image / (share * image + (1 - share) * means["text-only"])
    return {"image_example": image, "text_only_fraction": t, "interleaved_fraction": q * (1 - t)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--latents", required=True, help="a latent cache of a shapes set prepared with --interleaved")
    p.add_argument("--config", default=str(REPO_ROOT / "pipelines/configs/ablation/tiny.yaml"))
    p.add_argument("--num", type=int, default=4000, help="samples laid out per kind")
    p.add_argument("--share", type=float, default=0.5, help="wanted share of text-only tokens")
    args = p.parse_args()
    import yaml

    data = yaml.safe_load(Path(args.config).read_text())["data"]
    means = measure(args.config, args.latents, args.num)
    out = fractions(means, data.get("text_only_fraction", 0.0), data.get("interleaved_fraction", 0.0), args.share)
    print(
        "mean positions per sample: "
        + ", ".join(f"{k} {v:.2f}" for k, v in means.items())
        + f", image example (config mix) {out['image_example']:.2f}"
    )
    print(
        f"for {args.share:.0%} text-only tokens: data.text_only_fraction={out['text_only_fraction']:.3f} "
        f"data.interleaved_fraction={out['interleaved_fraction']:.3f}"
    )


if __name__ == "__main__":
    main()
