"""Rows of docs/training.md's shapes-sweep table from `scripts/shape_sweep.sh` output folders.

    PYTHONPATH=$PWD .venv/bin/python scripts/shape_sweep_table.py work/sweep

One row per evaluated checkpoint (NAME/eval-STEP/metrics.json): the overrides (NAME/args.txt), steps,
training CPU seconds (NAME/train.cpu_s, the whole run), held-out generation background / object colour /
shape and captioning background / colour / shape / CIDEr."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _find(d: dict, key: str):
    """The first value under `key` anywhere in nested dicts (metrics.json nests suites)."""
    if key in d:
        return d[key]
    for v in d.values():
        if isinstance(v, dict):
            found = _find(v, key)
            if found is not None:
                return found
    return None


def row(folder: Path, metrics_file: Path) -> str:
    metrics = json.loads(metrics_file.read_text())
    gen = (_find(metrics, "generation") or {}).get("accuracy", {})
    cap = _find(metrics, "captioning") or {}
    acc = cap.get("accuracy", {})
    args = (folder / "args.txt").read_text().split() if (folder / "args.txt").is_file() else []
    sets = " ".join(a for a in args if a != "--set") or "tiny.yaml as is"
    cpu = (folder / "train.cpu_s").read_text().strip() if (folder / "train.cpu_s").is_file() else "?"
    step = metrics_file.parent.name.removeprefix("eval-")

    def f(d: dict, k: str) -> str:
        v = d.get(k)
        return "–" if v is None else f"{v:.2f}"

    cider = cap.get("cider")
    return (
        f"| {folder.name} | {sets} | {step} | {cpu} | {f(gen, 'background')} | {f(gen, 'colour')} | "
        f"{f(gen, 'shape')} | {f(acc, 'background')} | {f(acc, 'colour')} | {f(acc, 'shape')} | "
        f"{'–' if cider is None else f'{cider:.2f}'} |"
    )


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "work/sweep")
    print(
        "| run | overrides of tiny.yaml | steps | train CPU s | gen bg | gen colour | gen shape | cap bg | "
        "cap colour | cap shape | CIDEr |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for metrics_file in sorted(
        root.glob("*/eval-*/metrics.json"), key=lambda p: (p.parent.parent.name, int(p.parent.name[5:]))
    ):
        print(row(metrics_file.parent.parent, metrics_file))


if __name__ == "__main__":
    main()
