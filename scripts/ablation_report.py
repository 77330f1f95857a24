"""The ablation's table and loss curves (issue 11): runs + evaluations of `pipelines/ablation.sh` → results.

    python scripts/ablation_report.py --work work/ablation --variants lmfusion ffn-only dense unfrozen \
        random-init from-scratch --results docs/results.md --plot docs/ablation_loss.png

Reads, for each variant folder WORK/NAME: `run/logs/train.jsonl` (losses, validation, FLOPs, CPU seconds),
`run/manifest.json` (the model switches), the final checkpoint's `model.safetensors` header (how many
parameters were trained), `eval-shapes/metrics.json`, `eval-text/metrics.json` + `eval-text/text/
per_item_{base,fused}.jsonl`, and the `*.wall_s` files the pipeline writes. Writes the markdown table, a
sentence per claim of the paper saying whether this run agrees, and a plot of the training and
validation losses. Every number comes from those files; nothing is typed in here. This script does
not train or evaluate anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lmfusion_cli.common.atomic import atomic_file, atomic_write_text  # noqa: E402
from lmfusion_cli.common.errors import UserError  # noqa: E402

# the attributes every shapes caption states (position and size are optional in the templates)
CORE_ATTRIBUTES = ("background", "colour", "shape")
WHAT_IS_TRAINED = {
    "lmfusion": "image experts (attention, norms, FFN; copied from text) + patcher + BOI/EOI; text frozen",
    "ffn-only": "image FFN + norms only (attention shared, frozen) + patcher + BOI/EOI; text frozen",
    "dense": "no image experts: the shared (text) modules, all trained at optim.lr, + patcher + BOI/EOI",
    "unfrozen": "image experts + patcher + BOI/EOI at optim.lr, and the text modules at optim.text_lr",
    "random-init": "image experts initialised randomly (not copied) + patcher + BOI/EOI; text frozen",
    "from-scratch": "everything, from random weights (Transfusion): same architecture as lmfusion",
}


@dataclass
class Variant:
    name: str
    model: dict[str, Any]
    config: dict[str, Any]
    records: list[dict[str, Any]]
    vals: list[dict[str, Any]]
    trained_params: int
    total_flops: float | None
    cpu_s: float | None
    wall_s: dict[str, float]
    shapes: dict[str, Any]
    text: dict[str, Any]
    text_ppl: dict[str, float]
    """Perplexity per byte of the correct answers: {"base": ..., "fused": ...}."""


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path} is missing; run pipelines/ablation.sh (it makes it) before the report.")
    return json.loads(path.read_text())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path} is missing; run pipelines/ablation.sh (it makes it) before the report.")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trained_params(run: Path, step: int) -> int:
    """Elements in the final checkpoint's weights: the trainable parameters (frozen ones are not stored)."""
    from safetensors import safe_open

    weights = run / "checkpoints" / f"step-{step:08d}" / "model" / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights} is missing; the run in {run} did not finish: rerun pipelines/ablation.sh.")
    with safe_open(str(weights), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _text_items(eval_dir: Path) -> dict[str, dict[str, Any]]:
    """The multiple-choice items the text evaluation used (its config's text.items, else the shipped set)."""
    import yaml

    config = yaml.safe_load((eval_dir / "config.yaml").read_text()) if (eval_dir / "config.yaml").is_file() else {}
    path = (config.get("text") or {}).get("items") or REPO_ROOT / "lmfusion_cli/evaluation/data/tiny_mc.jsonl"
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return {}
    return {str(r.get("id")): r for r in _read_jsonl(path)}


def _perplexity_per_byte(per_item: list[dict[str, Any]], items: dict[str, dict[str, Any]]) -> float:
    """exp(−Σ log p(correct answer) / Σ its UTF-8 bytes, the leading space included)."""
    loglik, nbytes = 0.0, 0
    for row in per_item:
        item = items.get(str(row["id"]))
        if item is None:
            continue
        loglik += row["logliks"][row["label"]]
        nbytes += len((" " + item["choices"][row["label"]]).encode("utf-8"))
    return math.exp(-loglik / nbytes) if nbytes else float("nan")


def load_variant(work: Path, name: str) -> Variant:
    folder = work / name
    run = folder / "run"
    manifest = _read_json(run / "manifest.json")
    if not manifest.get("complete"):
        raise UserError(f"The training run {run} is not complete; rerun pipelines/ablation.sh to finish it.")
    records = _read_jsonl(run / "logs" / "train.jsonl")
    steps = [r for r in records if "event" not in r]
    flops = [r.get("flops") for r in steps]
    wall = {}
    for stage in ("run", "eval-shapes", "eval-text"):
        path = folder / f"{stage}.wall_s"
        wall[stage] = float(path.read_text()) if path.is_file() else float("nan")
    shapes = _read_json(folder / "eval-shapes" / "metrics.json").get("shapes", {})
    text = _read_json(folder / "eval-text" / "metrics.json").get("text", {})
    items = _text_items(folder / "eval-text")
    ppl = {
        who: _perplexity_per_byte(_read_jsonl(folder / "eval-text" / "text" / f"per_item_{who}.jsonl"), items)
        for who in ("base", "fused")
    }
    import yaml

    return Variant(
        name=name,
        model=manifest["trains"]["lmfusion_config"],
        config=yaml.safe_load((run / "config.yaml").read_text()),
        records=steps,
        vals=[r for r in records if r.get("event") == "val"],
        trained_params=_trained_params(run, manifest["step"]),
        total_flops=sum(flops) if flops and all(f is not None for f in flops) else None,
        cpu_s=steps[-1].get("cpu_s") if steps else None,
        wall_s=wall,
        shapes=shapes,
        text=text,
        text_ppl=ppl,
    )


# ---- figures of one variant ---------------------------------------------------------------------------
def _mean(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


def caption_accuracy(v: Variant) -> float:
    acc = v.shapes.get("captioning", {}).get("accuracy", {})
    return _mean([acc.get(a) for a in CORE_ATTRIBUTES])


def generation_accuracy(v: Variant, attribute: str | None = None) -> float:
    acc = v.shapes.get("generation", {}).get("accuracy", {})
    return acc.get(attribute, float("nan")) if attribute else _mean([acc.get(a) for a in CORE_ATTRIBUTES])


def cider(v: Variant) -> float:
    return v.shapes.get("captioning", {}).get("cider", float("nan"))


def text_accuracy(v: Variant, who: str = "fused") -> float:
    return v.text.get("models", {}).get(who, {}).get("accuracy", float("nan"))


def _items(v: Variant) -> int:
    return int(v.shapes.get("num_items", 0))


def _outcomes(v: Variant, task: str) -> int:
    """Checked attribute values behind a task's mean accuracy (an item may state several objects)."""
    counts = v.shapes.get(task, {}).get("counts", {})
    return int(sum(counts.get(a) or 0 for a in CORE_ATTRIBUTES)) or _items(v) * len(CORE_ATTRIBUTES)


def _noise(p: float, n: int) -> float:
    """Two standard errors of a fraction p over n binary outcomes (a rough significance bar)."""
    return 2 * math.sqrt(max(p * (1 - p), 0.25 / max(n, 1)) / max(n, 1)) if n else float("inf")


# ---- the document -------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _flops(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e12:.2f} T"


def table(variants: list[Variant]) -> str:
    head = (
        "| variant | trained params | caption CIDEr | caption attr. acc. | gen. acc. background / colour / shape "
        "(mean) | text acc. fused (base) | text ppl/byte fused (base) | text = base | train FLOPs | train wall "
        "| train CPU | final val. image / caption loss |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for v in variants:
        gen = " / ".join(_fmt(generation_accuracy(v, a), 2) for a in CORE_ATTRIBUTES)
        last_val = v.vals[-1] if v.vals else {}
        rows.append(
            f"| {v.name} | {v.trained_params / 1e6:.2f} M | {_fmt(cider(v))} | {_fmt(caption_accuracy(v))} | "
            f"{gen} ({_fmt(generation_accuracy(v))}) | {_fmt(text_accuracy(v))} ({_fmt(text_accuracy(v, 'base'))}) | "
            f"{_fmt(v.text_ppl['fused'])} ({_fmt(v.text_ppl['base'])}) | "
            f"{'identical' if v.text.get('identical') else 'differs (max Δ ' + _fmt(v.text.get('max_abs_diff'), 2) + ')'} | "
            f"{_flops(v.total_flops)} | {v.wall_s['run']:.0f} s | {_fmt(v.cpu_s, 0)} s | "
            f"{_fmt(last_val.get('val_loss'))} / {_fmt(last_val.get('val_caption_loss'))} |"
        )
    return "\n".join(rows)


def _compare(a: Variant, b: Variant, metric, n: int, label: str) -> tuple[int, str]:
    """(+1 a better beyond noise, −1 b better beyond noise, 0 within noise), and the figures as text.

    `n` binary outcomes behind an accuracy give the noise bar (two standard errors); n = 0 (CIDEr)
    counts a difference beyond 10% of the larger value."""
    x, y = metric(a), metric(b)
    if math.isnan(x) or math.isnan(y):
        return 0, f"{label} n/a"
    bar = _noise((x + y) / 2, n) if n else 0.1 * max(abs(x), abs(y))  # no error bar for CIDEr: 10%
    sign = 0 if abs(x - y) <= bar else (1 if x > y else -1)
    return sign, f"{label} {x:.3f} vs {y:.3f}" + (f" (noise ±{bar:.3f})" if n else "")


def _verdict(signs: list[int]) -> str:
    if all(s > 0 for s in signs):
        return "**agrees**"
    if all(s < 0 for s in signs):
        return "**disagrees**"
    if all(s >= 0 for s in signs) and any(s > 0 for s in signs):
        return "**agrees in part** (the rest within noise)"
    if all(s == 0 for s in signs):
        return "**no conclusion** (within noise)"
    return "**mixed**"


def _image_claim(better: Variant, worse: Variant, claim: str) -> str:
    checks = [
        _compare(better, worse, cider, 0, "caption CIDEr"),
        _compare(better, worse, caption_accuracy, _outcomes(better, "captioning"), "caption attribute accuracy"),
        _compare(better, worse, generation_accuracy, _outcomes(better, "generation"), "generation accuracy"),
    ]
    return (
        f"- {claim} — here {_verdict([s for s, _ in checks])}: "
        + "; ".join(t for _, t in checks)
        + f" ({better.name} vs {worse.name})."
    )


def claims(by_name: dict[str, Variant]) -> list[str]:
    """One line per claim of the paper whose variants were run, saying whether this run agrees."""
    out = []
    lm, scratch = by_name.get("lmfusion"), by_name.get("from-scratch")
    if lm and scratch:
        out.append(
            _image_claim(
                lm,
                scratch,
                "Paper: LMFusion beats a Transfusion model trained from scratch on image understanding and generation",
            )
        )
        if lm.total_flops and scratch.total_flops:
            ratio = lm.total_flops / scratch.total_flops
            verdict = (
                "**agrees**"
                if ratio <= 0.75
                else f"**agrees only weakly** (a {1 - ratio:.0%} saving)"
                if ratio < 1
                else "**disagrees**"
            )
            out.append(
                f"- Paper: LMFusion trains for about half the FLOPs of from-scratch training — here {verdict}: "
                f"at the same steps and batch LMFusion's training costs {ratio:.2f}× the FLOPs of from-scratch "
                "(frozen text weights get no weight gradients, but text is a small share of each sequence "
                "here); the paper's 50% is at equal quality, which this table does not measure."
            )
    for better, worse, what in (
        ("lmfusion", "ffn-only", "deep separation (attention + FFN experts) beats shallow (FFN only)"),
        ("ffn-only", "dense", "shallow separation beats a dense, shared model"),
        ("lmfusion", "dense", "deep separation beats a dense, shared model"),
        ("lmfusion", "random-init", "image experts copied from the text modules start better than random ones"),
    ):
        if better in by_name and worse in by_name:
            out.append(_image_claim(by_name[better], by_name[worse], f"Paper: {what}"))
    if "unfrozen" in by_name and lm:
        sign_text = {1: "better", -1: "worse", 0: "no different (within noise)"}
        checks = [
            _compare(by_name["unfrozen"], lm, cider, 0, "caption CIDEr"),
            _compare(
                by_name["unfrozen"], lm, caption_accuracy, _outcomes(lm, "captioning"), "caption attribute accuracy"
            ),
            _compare(by_name["unfrozen"], lm, generation_accuracy, _outcomes(lm, "generation"), "generation accuracy"),
        ]
        out.append(
            "- Training the text modules too (unfrozen, at optim.text_lr) against keeping them frozen, on "
            "images: " + "; ".join(f"{t} → {sign_text[s]}" for s, t in checks) + " (unfrozen vs lmfusion)."
        )
    out += chance_lines(list(by_name.values()))
    frozen = [v for v in by_name.values() if v.model.get("freeze_text") and not v.model.get("from_scratch")]
    if frozen:
        same = [v.name for v in frozen if v.text.get("identical")]
        out.append(
            f"- Paper: frozen text modules keep the base LM's text ability exactly — here "
            f"{'**agrees**' if len(same) == len(frozen) else '**disagrees**'}: text-suite log-likelihoods "
            f"of {', '.join(v.name for v in frozen)} are {'bit-identical to' if len(same) == len(frozen) else 'not all identical to'} "
            f"the base's ({len(same)} of {len(frozen)})."
        )
    for v in by_name.values():
        if not v.model.get("freeze_text") or v.model.get("from_scratch"):
            dacc = text_accuracy(v) - text_accuracy(v, "base")
            out.append(
                f"- {v.name} trains text weights: its text suite differs from the base "
                f"(accuracy {text_accuracy(v):.3f} vs {text_accuracy(v, 'base'):.3f}, Δ {dacc:+.3f}; "
                f"perplexity per byte {v.text_ppl['fused']:.3f} vs {v.text_ppl['base']:.3f}; "
                f"max |Δ log-likelihood| {_fmt(v.text.get('max_abs_diff'), 3)})."
            )
    return out


def _stage_seconds(work: Path, name: str) -> float:
    path = work / f"{name}.wall_s"
    return float(path.read_text()) if path.is_file() else float("nan")


def cost_line(work: Path, variants: list[Variant]) -> str:
    """Wall seconds of every stage (from the pipeline's *.wall_s files) and training CPU seconds, summed."""
    train = sum(v.wall_s["run"] for v in variants)
    evals = sum(v.wall_s["eval-shapes"] + v.wall_s["eval-text"] for v in variants)
    data = _stage_seconds(work, "shapes") + _stage_seconds(work, "latents")
    cpu = sum(v.cpu_s or 0.0 for v in variants)
    return (
        f"Cost, summed over the stages (variants run side by side, so the elapsed time was shorter): data "
        f"{data / 60:.1f} min (prepare + encode-latents), training {train / 60:.1f} min wall / {cpu / 60:.1f} "
        f"CPU-min, evaluation {evals / 60:.1f} min wall."
    )


def chance_lines(variants: list[Variant]) -> list[str]:
    """Which generation attributes every variant checks above (or below) the checker's chance level."""
    chance = variants[0].shapes.get("generation", {}).get("chance", {})
    above = [a for a in CORE_ATTRIBUTES if a in chance and all(generation_accuracy(v, a) > chance[a] for v in variants)]
    below = [a for a in CORE_ATTRIBUTES if a in chance and all(generation_accuracy(v, a) < chance[a] for v in variants)]
    lines = []
    if above:
        lines.append(f"- Generation above the checker's chance level in every variant: {', '.join(above)}.")
    if below:
        lines.append(
            f"- Generation *below* chance in every variant: {', '.join(below)} — the checker does not "
            "recognise these attributes in the generated images yet, so they do not separate the variants."
        )
    return lines


def settings_section(variants: list[Variant], settings: list[str]) -> str:
    v = variants[0]
    c = v.config
    shared = [
        f"base `{c['base']['path']}`",
        f"batch {c['train']['batch_size']}",
        f"steps {c['schedule']['steps']}",
        f"lr {c['optim']['lr']} (warmup {c['schedule']['warmup_steps']}, cosine to {c['schedule']['min_lr']})",
        f"λ {v.model.get('lambda_image')}",
        f"seed {c['train']['seed']}",
        f"generation fraction {c['data']['generation_fraction']}",
        f"caption dropout {c['data']['caption_dropout']}",
        f"latents {v.model.get('latent_channels')}×{v.model.get('latent_size')}×{v.model.get('latent_size')}",
        f"patcher {v.model.get('patcher')} (patch {v.model.get('patch_size')})",
    ]
    lines = [
        "Shared by every variant (read from each run's `config.yaml`; the same budget and settings, "
        "nothing tuned per variant): " + ", ".join(shared) + "."
    ]
    if settings:
        lines.append("Pipeline settings: " + ", ".join(settings) + ".")
    lines.append("")
    lines.append("| variant | switches | what is trained |")
    lines.append("|---|---|---|")
    for v in variants:
        switches = ", ".join(f"{k}={v.model.get(k)}" for k in ("experts", "freeze_text", "image_init", "from_scratch"))
        text_lr = v.config.get("optim", {}).get("text_lr")
        if text_lr is not None:
            switches += f", optim.text_lr={text_lr}"
        lines.append(f"| {v.name} | {switches} | {WHAT_IS_TRAINED.get(v.name, 'see switches')} |")
    return "\n".join(lines)


def write_results(
    variants: list[Variant], path: Path, plot: Path, settings: list[str], work: Path, note: str = ""
) -> None:
    by_name = {v.name: v for v in variants}
    n = _items(variants[0])
    rel_plot = os.path.relpath(plot.resolve(), path.resolve().parent)
    doc = [
        "# Results: LMFusion against its baselines at small scale (issue 11)",
        "",
        "Produced by `pipelines/ablation.sh` → `scripts/ablation_report.py`; every number below is read from the "
        "runs' logs and the evaluations' `metrics.json`.",
        "",
        "## Settings",
        "",
        settings_section(variants, settings),
        "",
        cost_line(work, variants) + (f" {note}" if note else ""),
        "",
        "## Table",
        "",
        table(variants),
        "",
        f"Caption columns: {n} held-out shapes images captioned greedily (CIDEr; attribute accuracy = mean over "
        f"{', '.join(CORE_ATTRIBUTES)} of the caption stating the right value). Generation: {n} held-out prompts, "
        "the checker's accuracy per attribute (chance: "
        + ", ".join(
            f"{a} {variants[0].shapes.get('generation', {}).get('chance', {}).get(a, float('nan')):.2f}"
            for a in CORE_ATTRIBUTES
        )
        + "). Text: the shipped multiple-choice set scored by log-likelihood, the fused model next to its base "
        "LM (in parentheses); perplexity per byte of the correct answers; `text = base` is the bitwise comparison "
        "of every log-likelihood. FLOPs: `torch.utils.flop_counter` on training forward + backward (validation and "
        "evaluation excluded). Wall and CPU seconds are of the training process, with the variants run "
        "side by side on a shared machine (CPU seconds are the steadier figure).",
        "",
        "## Does it agree with the paper?",
        "",
        "A difference counts only beyond two binomial standard errors of the accuracies (CIDEr: beyond 10% of "
        "the larger value). "
        "Small models, few steps and few evaluation items: read these as a smoke test of the paper's "
        "directions, not a reproduction of its numbers.",
        "",
        *claims(by_name),
        "",
        "## Loss curves",
        "",
        f"![training and validation losses]({rel_plot})",
        "",
        "Top: training diffusion and caption (LM) losses per logged step (noisy: each step has its own task "
        "mix). Bottom: validation diffusion loss at fixed noise levels and seeds, and validation caption loss, "
        "on the same held-out items for every run (comparable between runs).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(doc))


def plot_losses(variants: list[Variant], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 2, figsize=(12, 8))
    axes = grid.ravel()
    for v in variants:
        steps = [r["step"] for r in v.records]
        axes[0].plot(steps, [r["image_loss"] for r in v.records], label=v.name, lw=1)
        axes[1].plot(steps, [r["text_loss"] for r in v.records], label=v.name, lw=1)
        val_steps = [r["step"] for r in v.vals]
        axes[2].plot(val_steps, [r["val_loss"] for r in v.vals], marker="o", label=v.name)
        axes[3].plot(val_steps, [r.get("val_caption_loss", float("nan")) for r in v.vals], marker="o", label=v.name)
    for ax, title in zip(
        axes,
        (
            "training diffusion loss",
            "training caption loss (LM)",
            "validation diffusion loss (fixed noise levels and seeds)",
            "validation caption loss (held-out image→caption)",
        ),
    ):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[3].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Table + loss curves of pipelines/ablation.sh (issue 11).")
    p.add_argument("--work", type=Path, required=True, help="the pipeline's WORK folder (one folder per variant)")
    p.add_argument("--variants", nargs="+", required=True, help="variant folder names, in table order")
    p.add_argument("--results", type=Path, default=Path("docs/results.md"), help="markdown output")
    p.add_argument("--plot", type=Path, default=Path("docs/ablation_loss.png"), help="loss-curve PNG output")
    p.add_argument("--setting", action="append", default=[], help="a pipeline setting to state, e.g. steps=300")
    p.add_argument("--note", default="", help="a sentence added to the settings (e.g. how the machine was shared)")
    args = p.parse_args(argv)
    try:
        variants = [load_variant(args.work, name) for name in args.variants]
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    plot_losses(variants, args.plot)
    write_results(variants, args.results, args.plot, args.setting, args.work, args.note)
    print(f"wrote {args.results} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
