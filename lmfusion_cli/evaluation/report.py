"""Evaluation outputs: `metrics.json` (atomic), `report.md` with an image grid and matplotlib plots.

Plots use the Agg backend (no display needed) and are written atomically as PNG. The report is
plain Markdown: a title, then one section per suite with a metrics table, plots and grids, all
referenced by paths relative to the output folder. This module renders; it computes no metric."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from lmfusion_cli.common.atomic import atomic_file, atomic_write_json, atomic_write_text

METRICS_NAME = "metrics.json"
REPORT_NAME = "report.md"


def write_metrics(out_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write `out_dir/metrics.json` atomically."""
    path = Path(out_dir) / METRICS_NAME
    atomic_write_json(path, dict(metrics))
    return path


def save_image_grid(
    images: Sequence[Image.Image], path: str | Path, cols: int = 8, cell: int | None = None, pad: int = 2
) -> Path:
    """Tile images (resized to `cell`² pixels, default: the first image's width) into one PNG."""
    if not images:
        raise ValueError("no images for the grid")
    cell = cell or images[0].width
    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + pad) + pad), (255, 255, 255))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image.convert("RGB").resize((cell, cell)), (pad + c * (cell + pad), pad + r * (cell + pad)))
    with atomic_file(path) as tmp:
        grid.save(tmp, format="PNG")
    return Path(path)


def grid_caption_table(captions: Sequence[str], cols: int = 8) -> str:
    """A Markdown table laid out like `save_image_grid`'s tiles: cell (row, col) holds that image's prompt."""
    if not captions:
        return ""
    cols = max(1, min(cols, len(captions)))
    cells = [_escape(c) for c in captions] + [""] * (-len(captions) % cols)
    rows = [cells[i : i + cols] for i in range(0, len(cells), cols)]
    header = "| " + " | ".join(f"col {c + 1}" for c in range(cols)) + " |"
    return "\n".join([header, "|" + "---|" * cols] + ["| " + " | ".join(r) + " |" for r in rows])


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_chance(
    accuracy: Mapping[str, float | None], chance: Mapping[str, float], path: str | Path, title: str
) -> Path:
    """Bar chart of accuracy per attribute with its chance level beside it (attributes with no value skipped)."""
    plt = _figure()
    names = [k for k, v in accuracy.items() if v is not None]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.2))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [accuracy[n] for n in names], width=0.4, label="accuracy")
    ax.bar([x + 0.2 for x in xs], [chance.get(n, 0.0) for n in names], width=0.4, label="chance", color="grey")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_values(values: Mapping[str, float], path: str | Path, title: str, ylabel: str = "") -> Path:
    """A plain bar chart (e.g. CIDEr / FID / CLIP score per model, accuracy per text task)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(1.2 * len(values) + 2, 3.2))
    ax.bar(list(values), list(values.values()))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return _save(plt, fig, path)


def _save(plt, fig, path: str | Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


@dataclass
class Section:
    title: str
    """Section heading (a suite name)."""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    """Numbers for the table; nested dicts become dotted keys, lists are left to metrics.json."""
    images: list[tuple[str, str]] = field(default_factory=list)
    """(path relative to the report, alt text) of plots and grids."""
    text: str = ""
    """Free Markdown under the heading."""
    footer: str = ""
    """Free Markdown after the images (e.g. the prompts of an image grid)."""


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, name + "."))
        elif not isinstance(value, (list, tuple)):
            rows.append((name, value))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def render_report(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        rows = _flatten(section.metrics)
        if rows:
            lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows] + [""]
        for rel, alt in section.images:
            lines += [f"![{alt}]({rel})", ""]
        if section.footer:
            lines += [section.footer, ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section]) -> Path:
    """Write `out_dir/report.md` atomically; images must already sit under `out_dir`."""
    out_dir = Path(out_dir)
    for section in sections:
        for rel, _ in section.images:
            if not (out_dir / rel).is_file():
                raise FileNotFoundError(f"report image {out_dir / rel} was not written")
    path = out_dir / REPORT_NAME
    atomic_write_text(path, render_report(title, sections))
    return path
