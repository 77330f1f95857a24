"""Where is shape lost? Upper bounds for the shapes demo (issue 23), from a latent cache made by encode-latents.

    PYTHONPATH=$PWD .venv/bin/python scripts/shapes_upper_bounds.py --latents work/tiny/latents [--items 400]

Prints, on the cache's test split (images re-rendered from `shapes.make_item`, the item index is in the key):
- the pixel checker on the original images (is the metric itself able to read shape?);
- the checker on VAE reconstructions of the cached posterior mean and of a posterior sample (what the
  latents can hold at best for any generator);
- linear and small-MLP probes (trained on the train split) that read the shape of single-object items from
  the latents, clean and noised the way flow training noises them (x_t = (1 − t)·x + t·ε): does the
  information exist at the noise levels where the transformer decides the image?
Also a confusion matrix of the checker's shape reading on the originals."""

from __future__ import annotations

import argparse
import json

import torch
from shape_probes import shape_labels, single_object_latents

from lmfusion_cli.common.vae import load_vae, resolve_vae
from lmfusion_cli.data import shapes
from lmfusion_cli.data.latents import open_latent_cache
from lmfusion_cli.evaluation.shapes_checker import analyze_image, score_images


def _index(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


def _to_pil(x: torch.Tensor):
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def _summary(result: dict) -> dict:
    return {k: round(v, 3) for k, v in result["accuracy"].items()}


def checker_bounds(cache, vae, n: int, seed: int) -> dict:
    items = [cache[i] for i in range(min(n, len(cache)))]
    attrs = [it["attributes"] for it in items]
    originals = [shapes.make_item(_index(it["key"]), seed=seed, resolution=cache.resolution).image for it in items]
    out = {"items": len(items), "original": _summary(score_images(originals, attrs))}
    gen = torch.Generator().manual_seed(0)
    for name in ("mean", "sample"):
        if name == "mean":
            z = torch.stack([it["mean"].float() for it in items])
        else:
            z = torch.stack(
                [it["mean"].float() + it["std"].float() * torch.randn(it["mean"].shape, generator=gen) for it in items]
            )
        with torch.no_grad():
            pix = torch.cat([vae.decode(z[i : i + 64]).sample for i in range(0, len(z), 64)])
        out[f"vae_{name}"] = _summary(score_images([_to_pil(p) for p in pix], attrs))
    confusion: dict[str, dict[str, int]] = {}
    for img, a in zip(originals, attrs, strict=True):
        if a["layout"] != "single":
            continue
        objs = analyze_image(img, max_objects=1).objects
        got = objs[0].shape if objs else "none"
        row = confusion.setdefault(f"{a['objects'][0]['shape']}/{a['objects'][0]['size']}", {})
        row[got] = row.get(got, 0) + 1
    out["checker_confusion_single_originals"] = confusion
    return out


def probe(train, test, hidden: int, t: float, epochs: int = 60, seed: int = 0) -> float:
    """Held-out shape accuracy of a probe on latents noised at flow time t (fresh noise every epoch)."""
    torch.manual_seed(seed)
    (xtr, ytr), (xte, yte) = train, test
    d = xtr[0].numel()
    net = (
        torch.nn.Linear(d, 3)
        if hidden == 0
        else torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 3))
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for j in range(0, len(xtr), 64):
            b = perm[j : j + 64]
            x = (1 - t) * xtr[b] + t * torch.randn_like(xtr[b])
            loss = torch.nn.functional.cross_entropy(net(x.flatten(1)), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        x = (1 - t) * xte + t * torch.randn(xte.shape, generator=g)
        return float((net(x.flatten(1)).argmax(-1) == yte).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--items", type=int, default=400, help="test items for the checker bounds")
    ap.add_argument("--seed", type=int, default=0, help="the seed `prepare --source shapes` used")
    ap.add_argument("--times", default="0,0.5,0.8,0.9,0.95", help="flow times t for the probes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test = open_latent_cache(args.latents, splits="test")
    vae = load_vae(resolve_vae(""))
    report = {"checker": checker_bounds(test, vae, args.items, args.seed)}
    print(json.dumps(report, indent=1), flush=True)
    train_x, train_attrs, _ = single_object_latents(args.latents, "train")
    test_x, test_attrs, _ = single_object_latents(args.latents, "test")
    train_xy, test_xy = (train_x, shape_labels(train_attrs)), (test_x, shape_labels(test_attrs))
    probes = {}
    for t in (float(x) for x in args.times.split(",")):
        probes[f"t={t}"] = {
            "linear": round(probe(train_xy, test_xy, 0, t), 3),
            "mlp256": round(probe(train_xy, test_xy, 256, t), 3),
        }
        print(json.dumps({f"t={t}": probes[f"t={t}"]}), flush=True)
    report["probes_single_shape"] = {"train": len(train_xy[1]), "test": len(test_xy[1]), **probes}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
