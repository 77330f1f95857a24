"""The text suite: multiple-choice benchmarks through lm-evaluation-harness, the fused model beside its base.

Scoring is lm-eval's (`lm_eval.simple_evaluate`): requests, batching, the log-likelihood of each
continuation and acc / acc_norm are computed there, for the base as an ordinary `hf` model and for the
fused model's text path through `lm_eval_adapter.FusedTextLM`. What this module adds:
- which tasks: lm-eval task names (`hellaswag`, `siqa` → `social_iqa`, `winogrande`, `piqa`, ...), or
  paths of task YAMLs with local data (relative `data_files` read against the YAML's folder); the
  shipped 257-item set is such a YAML (`tasks/lmfusion_tiny_mc.yaml`), the offline default;
- `--text-items`: a local JSONL (or `datasets` folder) of {context, choices, label} items, field names
  mapped by a `FieldMap`; malformed items are skipped and counted, the rest become an lm-eval task;
- `run_text_suite`: the models side by side per task, and the largest |Δ log-likelihood| between them
  (0.0, bit for bit, is what LMFusion's frozen text path promises).

The templated set for the shipped tiny LM (`data/tiny_mc.jsonl`) is made by `build_tiny_mc_set`
(`text_data.py`). This module does no model loading."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmfusion_cli.common.atomic import atomic_write_text
from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MCItem:
    id: str
    """Item id (the JSONL line number or dataset index when the source has none)."""
    context: str
    """Text before the answer."""
    choices: tuple[str, ...]
    """Candidate continuations (at least two)."""
    label: int
    """Index of the right choice."""


@dataclass(frozen=True)
class FieldMap:
    context: str = "context"
    """Field holding the context text."""
    choices: tuple[str, ...] = ("choices",)
    """One field holding a list of choices, or several fields holding one choice each (PIQA: sol1, sol2)."""
    label: str = "label"
    """Field holding the right choice's index (int or digit string)."""
    label_offset: int = 0
    """Subtracted from the label (1 for WinoGrande's "1"/"2" answers)."""
    id: str | None = "id"
    """Field holding an item id; where a record lacks it, the line number / dataset index is used."""

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("FieldMap.choices must name at least one field")


def _item_from_record(record: Mapping[str, Any], fields: FieldMap, default_id: str) -> MCItem:
    """One item from a mapping; KeyError / ValueError / TypeError say what is wrong with it."""
    context = record[fields.context]
    if len(fields.choices) == 1:
        choices = record[fields.choices[0]]
        if isinstance(choices, str) or not isinstance(choices, Sequence):
            raise TypeError(f"field '{fields.choices[0]}' must be a list of strings")
    else:
        choices = [record[name] for name in fields.choices]
    if not isinstance(context, str) or not all(isinstance(c, str) for c in choices):
        raise TypeError("context and choices must be strings")
    if len(choices) < 2:
        raise ValueError("an item needs at least two choices")
    label = int(record[fields.label]) - fields.label_offset
    if not 0 <= label < len(choices):
        raise ValueError(f"label {label} is out of range for {len(choices)} choices")
    item_id = str(record[fields.id]) if fields.id is not None and fields.id in record else default_id
    return MCItem(id=item_id, context=context, choices=tuple(choices), label=label)


def _items_from_records(records: Sequence[tuple[str, Any]], fields: FieldMap) -> tuple[list[MCItem], SkipLog]:
    items, skips = [], SkipLog()
    for default_id, record in records:
        try:
            if not isinstance(record, Mapping):
                raise TypeError("a record must be a JSON object")
            items.append(_item_from_record(record, fields, default_id))
            skips.keep()
        except KeyError as e:
            skips.skip(default_id, "missing-field", f"no field {e}")
        except (TypeError, ValueError) as e:
            skips.skip(default_id, "bad-item", str(e))
    return items, skips


def load_jsonl(path: str | Path, fields: FieldMap = FieldMap()) -> tuple[list[MCItem], SkipLog]:
    """Items from a JSONL file; unreadable or malformed lines are skipped and counted by reason."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"The multiple-choice file {path} does not exist; pass a JSONL file with "
            f'{{"context", "choices", "label"}} lines.'
        )
    records, skips = [], SkipLog()
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append((f"{path.name}:{lineno}", json.loads(raw.decode("utf-8"))))
        except UnicodeDecodeError as e:  # a binary file: every line is skipped, then refused as empty
            skips.skip(f"{path.name}:{lineno}", "bad-encoding", str(e))
        except json.JSONDecodeError as e:
            skips.skip(f"{path.name}:{lineno}", "invalid-json", str(e))
    items, item_skips = _items_from_records(records, fields)
    skips.merge(item_skips)
    _check_not_empty(items, skips, path)
    return items, skips


def load_hf_disk(
    path: str | Path, fields: FieldMap = FieldMap(), split: str | None = None
) -> tuple[list[MCItem], SkipLog]:
    """Items from a `datasets` dataset saved with `save_to_disk` (a DatasetDict needs `split`)."""
    import datasets

    path = Path(path)
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"{path} is not a dataset saved with `datasets.save_to_disk`; point at such a folder.") from e
    if isinstance(data, datasets.DatasetDict):
        if split is None or split not in data:
            raise UserError(f"{path} holds the splits {sorted(data)}; choose one with the split option.")
        data = data[split]
    items, skips = _items_from_records([(str(i), rec) for i, rec in enumerate(data)], fields)
    _check_not_empty(items, skips, path)
    return items, skips


def _check_not_empty(items: list[MCItem], skips: SkipLog, path: Path) -> None:
    if skips.num_skipped:
        log.warning("%s: %s", path, skips.summary())
    if not items:
        raise UserError(f"{path} has no usable multiple-choice items ({skips.summary()}); check its field names.")


# ---- lm-evaluation-harness tasks ------------------------------------------------------------------
SHIPPED_TASK = Path(__file__).parent / "tasks" / "lmfusion_tiny_mc.yaml"
"""The shipped 257-item set as an lm-eval task (the offline default)."""
TASK_ALIASES = {"siqa": "social_iqa"}
"""Paper names → lm-eval task names (LMFusion's SIQA is lm-eval's `social_iqa`)."""
ITEMS_TASK_TEMPLATE = {
    "dataset_path": "json",
    "output_type": "multiple_choice",
    "test_split": "test",
    "doc_to_text": "{{context}}",
    "doc_to_choice": "{{choices}}",
    "doc_to_target": "label",
    "target_delimiter": " ",
    "metric_list": [
        {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
    ],
    "metadata": {"version": 1.0},
}


def task_from_yaml(path: str | Path) -> dict[str, Any]:
    """An lm-eval task YAML as a config dict, with relative local `data_files` read against the YAML's folder.

    lm-eval's own loader reads it (`include:` and `!function` resolve against the YAML's folder); a
    relative data file would otherwise be looked up in the current directory."""
    from lm_eval.tasks._yaml_loader import (
        load_yaml,  # lm-eval 0.4's YAML loader (includes, !function)
    )

    path = Path(path)
    if not path.is_file():
        raise UserError(f"The task file {path} does not exist; pass an lm-eval task YAML or a task name.")
    try:
        cfg = load_yaml(path, resolve_func=True)
    except Exception as e:
        raise UserError(
            f"The task file {path} cannot be read by lm-eval ({type(e).__name__}: {e}); fix the YAML."
        ) from e
    if "task" not in cfg:
        raise UserError(f"The task file {path} has no 'task:' name; it must be an lm-eval task YAML.")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": _resolve_files(files, path.parent)}
    return cfg


def _resolve_files(files: Any, folder: Path) -> Any:
    if isinstance(files, str):
        local = folder / files
        return str(local.resolve()) if not Path(files).is_absolute() and "://" not in files else files
    if isinstance(files, list):
        return [_resolve_files(f, folder) for f in files]
    if isinstance(files, dict):
        return {k: _resolve_files(v, folder) for k, v in files.items()}
    return files


def items_task(items: Sequence[MCItem], path: str | Path, name: str) -> dict[str, Any]:
    """A multiple-choice lm-eval task over `items` (written to `path` as clean JSONL): `--text-items` files."""
    path = Path(path)
    from lmfusion_cli.common.atomic import atomic_write_text

    atomic_write_text(
        path,
        "".join(
            json.dumps({"id": it.id, "context": it.context, "choices": list(it.choices), "label": it.label}) + "\n"
            for it in items
        ),
    )
    return {"task": name, **ITEMS_TASK_TEMPLATE, "dataset_kwargs": {"data_files": {"test": str(path.resolve())}}}


def task_specs(names: Sequence[str]) -> list[str | dict[str, Any]]:
    """`--tasks` entries → lm-eval specs: a YAML path becomes its config dict, a name its lm-eval name."""
    specs: list[str | dict[str, Any]] = []
    for name in names:
        if name.endswith((".yaml", ".yml")) or Path(name).is_file():
            specs.append(task_from_yaml(name))
        else:
            specs.append(TASK_ALIASES.get(name, name))
    return specs


def load_tasks(specs: Sequence[str | dict[str, Any]]) -> tuple[Any, list[str]]:
    """(lm-eval TaskManager, task names) with every task built now: unknown names and data that cannot be
    fetched are `UserError`s before any model loads. lm-eval's registry (~15k YAMLs, ~20 s to index) is
    read only when a task is named rather than given as a YAML."""
    named = [s for s in specs if isinstance(s, str)]
    manager = _task_manager(bool(named))
    unknown = [n for n in named if n not in manager.all_tasks]
    if unknown:
        raise UserError(
            f"Unknown lm-eval task(s) {', '.join(unknown)}; pass names from `lm_eval ls tasks` "
            f"(e.g. hellaswag, siqa, winogrande, piqa) or paths of task YAML files."
        )
    names = []
    for spec in specs:
        try:
            loaded = manager.load([spec])
        except (ConnectionError, OSError) as e:
            what = spec if isinstance(spec, str) else spec.get("task")
            raise UserError(
                f"The data of task {what} cannot be loaded ({type(e).__name__}: {str(e)[:200]}); "
                f"go online once so `datasets` caches it, or pass a task YAML with local data_files."
            ) from e
        names.extend(loaded["tasks"])
    return manager, names


@functools.lru_cache(maxsize=2)
def _task_manager(include_defaults: bool) -> Any:
    """lm-eval's task index, built once per process (with its registry: ~15k YAMLs, ~20 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=include_defaults)


def _per_item_rows(task: str, result: Any) -> list[dict[str, Any]]:
    return [{"task": task, **row} for row in result.per_item]


def run_text_suite(
    out_dir: str | Path,
    tasks: Sequence[str | dict[str, Any]],
    task_manager: Any,
    lms: Mapping[str, Any],
    limit: int | None = None,
) -> tuple[dict[str, Any], Any]:
    """Each lm-eval model in `lms` (e.g. {"base": ..., "fused": ...}) on `tasks`; per-task acc / acc_norm
    side by side, and how far each model's per-request log-likelihoods are from the first model's.

    Writes `text/per_item_{name}.jsonl` (task, id, label, logliks, acc, acc_norm per document) and
    `text/accuracy.png`; returns (metrics, report section)."""
    from lmfusion_cli.evaluation import report
    from lmfusion_cli.evaluation.lm_eval_adapter import evaluate_lm
    from lmfusion_cli.evaluation.report import Section

    root = Path(out_dir) / "text"
    results = {name: evaluate_lm(lm, list(tasks), task_manager, limit) for name, lm in lms.items()}
    names = list(results)
    first = results[names[0]]
    per_task: dict[str, Any] = {}
    overall_diff = 0.0
    for task, ref in first.items():
        row: dict[str, Any] = {"num_items": ref.num_items}
        diff = 0.0
        for name in names:
            res = results[name][task]
            row[name] = {k: res.metrics[k] for k in ("acc", "acc_norm") if k in res.metrics}
            if name != names[0]:
                a, b = ref.logliks(), res.logliks()
                if len(a) != len(b):
                    raise RuntimeError(f"task {task}: {name} answered {len(b)} requests, {names[0]} {len(a)}")
                diff = max([diff, *(abs(x - y) for x, y in zip(a, b))])
        row.update(max_abs_diff=diff, identical=diff == 0.0)
        per_task[task] = row
        overall_diff = max(overall_diff, diff)
    for name, res in results.items():
        rows = [r for task, tr in res.items() for r in _per_item_rows(task, tr)]
        atomic_write_text(root / f"per_item_{name}.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    num_items = sum(r["num_items"] for r in per_task.values())
    models = {
        name: {
            metric: sum(per_task[t][name].get(key, 0.0) * per_task[t]["num_items"] for t in per_task) / num_items
            for metric, key in (("accuracy", "acc"), ("accuracy_norm", "acc_norm"))
        }
        for name in names
    }
    metrics = {
        "tasks": per_task,
        "models": models,
        "num_items": num_items,
        "identical": overall_diff == 0.0,
        "max_abs_diff": overall_diff,
        "harness": f"lm-eval {_lm_eval_version()}",
    }
    report.plot_values(
        {f"{t}\n{n}": per_task[t][n].get("acc", 0.0) for t in per_task for n in names},
        root / "accuracy.png",
        "text benchmarks (lm-eval)",
        "acc",
    )
    text = (
        "Per-request log-likelihoods are **identical** across models (bit for bit)."
        if overall_diff == 0.0
        else f"Models **differ**: max |Δ log-likelihood| = {overall_diff:.3g}."
    )
    text += " Scored by lm-evaluation-harness (zero-shot; acc, acc_norm as lm-eval defines them)."
    return metrics, Section("text", metrics, [("text/accuracy.png", "text accuracy per task and model")], text)


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")
