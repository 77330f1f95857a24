"""The ablation's tables, claims and figures (issues 11, 23): runs + evaluations of `pipelines/ablation.sh` → results.

    python scripts/ablation_report.py --work work/ablation --variants lmfusion ffn-only dense unfrozen \
        random-init from-scratch transfusion transfusion-2x --seeds 0 1 2 --results docs/results.md \
        --plot docs/ablation_loss.png --flops-plot docs/ablation_flops.png

Reads every (variant, seed) run folder WORK/VARIANT/seed-SEED (scripts/ablation_runs.py), averages over
seeds and judges the paper's claims by two standard errors (scripts/ablation_stats.py), and writes the
markdown, the loss curves (first seed of each variant) and the main figures against training FLOPs (one
marker per run, the variant's mean with sd bars). Every number comes from the runs' files; nothing is
typed in here. This script does not train or evaluate anything.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_runs import CORE_ATTRIBUTES, load_run, seconds_file  # noqa: E402
from ablation_stats import Group, claims  # noqa: E402

from lmfusion_cli.common.atomic import atomic_file, atomic_write_text  # noqa: E402
from lmfusion_cli.common.errors import UserError  # noqa: E402

WHAT_IS_TRAINED = {
    "lmfusion": "image experts (attention, norms, FFN; copied from text) + patcher + BOI/EOI; text frozen",
    "ffn-only": "image FFN + norms only (attention shared, frozen) + patcher + BOI/EOI; text frozen",
    "dense": "no image experts: the shared (text) modules, all trained at optim.lr, + patcher + BOI/EOI",
    "unfrozen": "image experts + patcher + BOI/EOI at optim.lr, and the text modules at optim.text_lr",
    "random-init": "image experts initialised randomly (not copied) + patcher + BOI/EOI; text frozen",
    "from-scratch": "everything, from random weights: same architecture as lmfusion, the same data mix",
    "transfusion": "everything, from random weights, with half the training tokens text-only (the tiny LM's corpus)",
    "transfusion-2x": "as transfusion, twice the steps",
}


def load_groups(work: Path, variants: list[str], seeds: list[int]) -> dict[str, Group]:
    return {v: Group(v, [load_run(work, v, s) for s in seeds]) for v in variants}


def _flops(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x / 1e12:.2f} T"


def image_table(groups: dict[str, Group]) -> str:
    cols = ["caption CIDEr"] + [f"caption {a}" for a in CORE_ATTRIBUTES] + [f"gen. {a}" for a in CORE_ATTRIBUTES]
    rows = ["| variant | n | " + " | ".join(cols) + " | gen. mean |", "|---" * (len(cols) + 3) + "|"]
    keys = ["cider"] + [f"caption_{a}" for a in CORE_ATTRIBUTES] + [f"generation_{a}" for a in CORE_ATTRIBUTES]
    for g in groups.values():
        cells = [g.stat(k).text(2 if k != "cider" else 3) for k in keys + ["generation_accuracy"]]
        rows.append(f"| {g.variant} | {g.n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def text_cost_table(groups: dict[str, Group]) -> str:
    head = (
        "| variant | n | trained params | text acc. fused (base) | text ppl/byte fused (base) | text = base | "
        "image examples | train FLOPs | train CPU | job CPU (train + evals) | final val. image / caption loss |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for g in groups.values():
        same = int(g.stat("text_identical").mean * g.n + 0.5)
        identical = "identical" if same == g.n else f"differs ({g.n - same} of {g.n} runs)"
        rows.append(
            f"| {g.variant} | {g.n} | {g.stat('trained_params').mean / 1e6:.2f} M | {g.stat('text_accuracy').text()} "
            f"({g.stat('text_accuracy_base').text()}) | {g.stat('text_ppl').text()} ({g.stat('text_ppl_base').text()}) "
            f"| {identical} | {g.stat('image_examples').mean:.0f} | {_flops(g.stat('flops').mean)} | "
            f"{g.stat('train_cpu_s').text(0)} s | {g.stat('job_cpu_s').text(0)} s | "
            f"{g.stat('val_loss').text()} / {g.stat('val_caption_loss').text()} |"
        )
    return "\n".join(rows)


def cost_line(work: Path, groups: dict[str, Group]) -> str:
    """Total CPU (data stages + every job's stages) and the pipeline's elapsed time over its invocations."""
    data = sum(seconds_file(work / f"{s}.cpu_s") for s in ("shapes", "latents"))
    jobs = sum(sum(f["job_cpu_s"] for f in g.figures) for g in groups.values())
    runs = sum(g.n for g in groups.values())
    invocations = work / "invocations.wall_s"
    lines = invocations.read_text().split("\n") if invocations.is_file() else []
    wall = sum(float(line.split()[1]) for line in lines if len(line.split()) == 2)
    return (
        f"Cost: {(data + jobs) / 3600:.2f} CPU-hours in all (data {data / 60:.1f} CPU-min for prepare + "
        f"encode-latents, {jobs / 3600:.2f} CPU-hours for the {runs} runs' training and evaluations; user + "
        f"system time of the stages' processes), {wall / 3600:.2f} h elapsed over {len([x for x in lines if x])} "
        "invocation(s) of the pipeline (runs side by side)."
    )


def settings_section(groups: dict[str, Group], settings: list[str]) -> str:
    run = next(iter(groups.values())).runs[0]
    c, m = run.config, run.model
    shared = [
        f"base `{c['base']['path']}`",
        f"batch {c['train']['batch_size']}",
        f"lr {c['optim']['lr']} (warmup {c['schedule']['warmup_steps']}, cosine to {c['schedule']['min_lr']})",
        f"λ {m.get('lambda_image')}",
        f"objective {m.get('objective')} (timestep shift {m.get('timestep_shift')})",
        f"patcher {m.get('patcher')} (patch {m.get('patch_size')}, `image_position: {m.get('image_position', 'learned')}`)",
        f"latents {m.get('latent_channels')}×{m.get('latent_size')}×{m.get('latent_size')}",
        f"generation fraction {c['data']['generation_fraction']} of the caption/image examples",
        f"caption dropout {c['data']['caption_dropout']}",
    ]
    lines = [
        "Shared by every run (read from the runs' `config.yaml`; the same budget and settings, nothing tuned "
        "per variant): " + ", ".join(shared) + "."
    ]
    if settings:
        lines.append("Pipeline settings: " + ", ".join(settings) + ".")
    lines += [
        "",
        "| variant | switches | steps | text-only / interleaved fraction | what is trained |",
        "|---|---|---|---|---|",
    ]
    for g in groups.values():
        r = g.runs[0]
        switches = ", ".join(f"{k}={r.model.get(k)}" for k in ("experts", "freeze_text", "image_init", "from_scratch"))
        text_lr = r.config.get("optim", {}).get("text_lr")
        if text_lr is not None:
            switches += f", optim.text_lr={text_lr}"
        d = r.config["data"]
        lines.append(
            f"| {g.variant} | {switches} | {r.config['schedule']['steps']} | {d.get('text_only_fraction', 0)} / "
            f"{d.get('interleaved_fraction', 0)} | {WHAT_IS_TRAINED.get(g.variant, 'see switches')} |"
        )
    return "\n".join(lines)


def write_results(
    groups: dict[str, Group], path: Path, plot: Path, flops_plot: Path, settings: list[str], work: Path, note: str = ""
) -> None:
    first = next(iter(groups.values())).runs[0]
    n = int(first.shapes.get("num_items", 0))
    chance = first.shapes.get("generation", {}).get("chance", {})
    rel = {p: os.path.relpath(p.resolve(), path.resolve().parent) for p in (plot, flops_plot)}
    doc = [
        "# Results: LMFusion against its baselines at small scale (issues 11, 23)",
        "",
        "Produced by `pipelines/ablation.sh` → `scripts/ablation_report.py`; every number below is read from the "
        "runs' logs and the evaluations' `metrics.json`. Figures are mean ± sd over the seeds (n per row).",
        "",
        "## Settings",
        "",
        settings_section(groups, settings),
        "",
        cost_line(work, groups) + (f" {note}" if note else ""),
        "",
        "## Images",
        "",
        image_table(groups),
        "",
        f"Captioning: {n} held-out shapes images captioned greedily (CIDEr; per attribute: the caption states the "
        f"right value). Generation: {n} held-out prompts, the checker's accuracy per attribute (chance: "
        + ", ".join(f"{a} {chance.get(a, float('nan')):.3g}" for a in CORE_ATTRIBUTES)
        + "); gen. mean averages the three.",
        "",
        "## Text and cost",
        "",
        text_cost_table(groups),
        "",
        "Text: the multiple-choice set scored by log-likelihood, the fused model next to its base LM (in "
        "parentheses); perplexity per byte of the correct answers; `text = base` is the bitwise comparison of every "
        "log-likelihood. Image examples: steps × batch × (1 − the text-only fraction). FLOPs: "
        "`torch.utils.flop_counter` on training forward + backward (validation and evaluation excluded). CPU: "
        "user + system seconds of the stage's processes, the runs side by side on a shared machine.",
        "",
        "## Does it agree with the paper?",
        "",
        "Each line compares the seed means of two variants: a difference counts only beyond two standard errors "
        "of the difference, 2·SE = 2·sqrt(sd₁²/n₁ + sd₂²/n₂). **agree**: the paper's direction, beyond 2·SE; "
        "**disagree**: the opposite direction, beyond 2·SE; **within noise**: cannot be told apart at this "
        "scale. Small models, few steps and few evaluation items: a test of the paper's directions, not a "
        "reproduction of its numbers.",
        "",
        *claims(groups),
        "",
        "## Against training FLOPs",
        "",
        f"![figures against training FLOPs]({rel[flops_plot]})",
        "",
        "One small marker per run; the large marker is the variant's mean with ± sd bars.",
        "",
        "## Loss curves",
        "",
        f"![training and validation losses]({rel[plot]})",
        "",
        "First seed of each variant. Top: training diffusion and caption (LM) losses per logged step (noisy: each "
        "step has its own task mix). Bottom: validation diffusion loss at fixed noise levels and seeds, and "
        "validation caption loss, on the same held-out items for every run (comparable between runs).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(doc))


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_losses(groups: dict[str, Group], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 2, figsize=(12, 8))
    axes = grid.ravel()
    for g in groups.values():
        r = g.runs[0]
        label = f"{g.variant} (seed {r.seed})"
        steps = [x["step"] for x in r.records]
        axes[0].plot(steps, [x["image_loss"] for x in r.records], label=label, lw=1)
        axes[1].plot(steps, [x["text_loss"] for x in r.records], label=label, lw=1)
        val_steps = [x["step"] for x in r.vals]
        axes[2].plot(val_steps, [x["val_loss"] for x in r.vals], marker="o", label=label)
        axes[3].plot(val_steps, [x.get("val_caption_loss", float("nan")) for x in r.vals], marker="o", label=label)
    titles = (
        "training diffusion loss",
        "training caption loss (LM)",
        "validation diffusion loss (fixed noise levels and seeds)",
        "validation caption loss (held-out image→caption)",
    )
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[3].set_yscale("log")
    axes[0].legend(fontsize=8)
    _save(fig, path)


def plot_flops(groups: dict[str, Group], path: Path) -> None:
    """Caption CIDEr, generation accuracy and caption attribute accuracy against training FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("cider", "caption CIDEr"), ("generation_accuracy", "generation accuracy (mean of 3 attributes)"))
    panels += (("caption_accuracy", "caption attribute accuracy (mean of 3)"),)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for i, g in enumerate(groups.values()):
        colour = f"C{i % 10}"
        flops = [f["flops"] / 1e12 for f in g.figures]
        for ax, (key, title) in zip(axes, panels):
            ax.scatter(flops, [f[key] for f in g.figures], color=colour, s=14, alpha=0.6)
            s = g.stat(key)
            ax.errorbar(
                g.stat("flops").mean / 1e12, s.mean, yerr=0 if s.n < 2 else s.sd, color=colour, marker="o",
                markersize=8, capsize=4, label=f"{g.variant} (n {g.n})",
            )  # fmt: skip
            ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("training FLOPs (T)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Tables, claims and figures of pipelines/ablation.sh (issues 11, 23).")
    p.add_argument("--work", type=Path, required=True, help="the pipeline's WORK folder (VARIANT/seed-SEED runs)")
    p.add_argument("--variants", nargs="+", required=True, help="variant folder names, in table order")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="the seeds of every variant")
    p.add_argument("--results", type=Path, default=Path("docs/results.md"), help="markdown output")
    p.add_argument("--plot", type=Path, default=Path("docs/ablation_loss.png"), help="loss-curve PNG output")
    p.add_argument("--flops-plot", type=Path, default=None, help="figures against FLOPs (default: beside --plot)")
    p.add_argument("--setting", action="append", default=[], help="a pipeline setting to state, e.g. steps=300")
    p.add_argument("--note", default="", help="a sentence added to the settings (e.g. how the machine was shared)")
    args = p.parse_args(argv)
    flops_plot = args.flops_plot or args.plot.parent / "ablation_flops.png"
    try:
        groups = load_groups(args.work, args.variants, args.seeds)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    plot_losses(groups, args.plot)
    plot_flops(groups, flops_plot)
    write_results(groups, args.results, args.plot, flops_plot, args.setting, args.work, args.note)
    print(f"wrote {args.results}, {args.plot} and {flops_plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
