"""Draw the LMFusion architecture picture used in the README (docs/architecture.png).

python scripts/draw_architecture.py --out docs/architecture.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

TEXT = "#4C72B0"
IMAGE = "#DD8452"
SHARED = "#8C8C8C"


def box(ax, x, y, w, h, label, colour, frozen=False, fontsize=9):
    style = "round,pad=0.02,rounding_size=0.08"
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle=style,
            fc=colour,
            ec="black",
            lw=1.0,
            alpha=0.35 if frozen else 0.85,
            hatch="//" if frozen else None,
        )
    )
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=fontsize)


def arrow(ax, x0, y0, x1, y1):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10, lw=1.0, color="black"))


def draw(out: str) -> None:
    fig, ax = plt.subplots(figsize=(9, 6.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 7.4)
    ax.axis("off")

    # Inputs.
    box(ax, 0.3, 0.2, 3.6, 0.6, "text tokens  (caption, BOI/EOI)", TEXT, frozen=True)
    box(ax, 5.9, 0.2, 3.8, 0.6, "VAE latents + noise, timestep t", IMAGE)
    box(ax, 0.3, 1.1, 3.6, 0.55, "token embedding (frozen)", TEXT, frozen=True)
    box(ax, 5.9, 1.1, 3.8, 0.55, "U-Net down path → patches", IMAGE)
    arrow(ax, 2.1, 0.8, 2.1, 1.1)
    arrow(ax, 7.8, 0.8, 7.8, 1.1)

    # One decoder layer (× N).
    ax.add_patch(
        FancyBboxPatch(
            (0.1, 1.95), 9.8, 3.55, boxstyle="round,pad=0.02,rounding_size=0.1", fc="none", ec="black", lw=1.2, ls="--"
        )
    )
    ax.text(9.75, 5.3, "× N layers", ha="right", fontsize=10, style="italic")
    box(ax, 0.3, 2.15, 3.6, 0.55, "RMSNorm + Q/K/V (text)", TEXT, frozen=True)
    box(ax, 5.9, 2.15, 3.8, 0.55, "RMSNorm + Q/K/V (image)", IMAGE)
    box(
        ax,
        2.2,
        3.0,
        5.6,
        0.65,
        "one shared attention over all tokens\ncausal for text, bidirectional inside an image",
        SHARED,
    )
    box(ax, 0.3, 3.95, 3.6, 0.55, "O proj + RMSNorm + FFN (text)", TEXT, frozen=True)
    box(ax, 5.9, 3.95, 3.8, 0.55, "O proj + RMSNorm + FFN (image)", IMAGE)
    for x in (2.1, 7.8):
        arrow(ax, x, 1.65, x, 2.15)
    arrow(ax, 2.1, 2.7, 3.5, 3.0)
    arrow(ax, 7.8, 2.7, 6.5, 3.0)
    arrow(ax, 3.5, 3.65, 2.1, 3.95)
    arrow(ax, 6.5, 3.65, 7.8, 3.95)

    # Outputs.
    box(ax, 0.3, 5.8, 3.6, 0.55, "final norm + LM head (frozen)", TEXT, frozen=True)
    box(ax, 5.9, 5.8, 3.8, 0.55, "image final norm + U-Net up path", IMAGE)
    arrow(ax, 2.1, 4.5, 2.1, 5.8)
    arrow(ax, 7.8, 4.5, 7.8, 5.8)
    ax.text(2.1, 6.75, "next-token LM loss", ha="center", fontsize=10)
    ax.text(7.8, 6.75, "λ · diffusion loss (ε or velocity)", ha="center", fontsize=10)
    arrow(ax, 2.1, 6.35, 2.1, 6.6)
    arrow(ax, 7.8, 6.35, 7.8, 6.6)
    ax.text(
        5.0,
        7.2,
        "LMFusion: frozen text expert (hatched) + trainable image expert, routed by token index",
        ha="center",
        fontsize=10.5,
        weight="bold",
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/architecture.png")
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()
