"""What the suites read, checked (and loaded where cheap) before the model loads: a bad path fails in seconds.

The text suite's lm-eval tasks or `--text-items`, the test split of a prepared shapes set, and the COCO
layout, prompt count and the FID / CLIP scorers. `check_inputs` is the one entry point (`stage.py` calls
it first); running the suites on the loaded model is `suite_runs.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmfusion_cli.common.hashing import sha256_file
from lmfusion_cli.common.manifest import SkipLog
from lmfusion_cli.evaluation.config import EvaluateConfig


@dataclass
class TextInputs:
    """The text suite's tasks, checked before the model loads (`--text-items` items are written as a task later)."""

    specs: list = field(default_factory=list)
    """lm-eval task specs (names or config dicts) from `--tasks` / the shipped YAML."""
    items: list | None = None
    """`--text-items` items, when given."""
    source: str = ""
    """What the tasks are, for the manifest."""


def _text_inputs(cfg: EvaluateConfig) -> tuple[TextInputs, SkipLog]:
    from lmfusion_cli.evaluation.text_suite import SHIPPED_TASK, load_hf_disk, load_jsonl, load_tasks, task_specs

    t = cfg.text
    if t.items:
        path = Path(t.items)
        items, skips = load_hf_disk(path, t.fields, t.split) if path.is_dir() else load_jsonl(path, t.fields)
        return TextInputs(items=items, source=str(path)), skips
    names = list(t.tasks) or [str(SHIPPED_TASK)]
    specs = task_specs(names)
    load_tasks(specs)  # unknown names, unreadable YAML or data that cannot be fetched: refused now
    return TextInputs(specs=specs, source=", ".join(names)), SkipLog()


def _coco_scorers(cfg: EvaluateConfig, device: str) -> tuple[Any, str, Any, str]:
    """(FID extractor, its id, CLIP scorer, its id), after checking the COCO layout and the prompt count.

    With no local file given, the weights come the libraries' own way: clean-fid's `InceptionV3W` and
    open_clip's pretrained tag, each downloading into its cache when online (a `UserError` offline)."""
    from lmfusion_cli.evaluation.clip_score import load_clip, load_clip_pretrained
    from lmfusion_cli.evaluation.coco import find_layout, generation_images, karpathy_ids, make_prompts
    from lmfusion_cli.evaluation.fid import cleanfid_inception, load_inception

    c = cfg.coco
    layout = find_layout(c.root)
    if c.karpathy_split:
        karpathy_ids(c.karpathy_split)
    make_prompts(generation_images(layout)[0], c.num_prompts, c.seed)  # refuses more prompts than images now
    if c.clip_weights:
        scorer = load_clip(c.clip_arch, c.clip_weights, c.clip_config, device)
        clip_id = f"{c.clip_arch} ({Path(c.clip_weights).name}-{sha256_file(c.clip_weights)[:12]})"
    else:
        scorer = load_clip_pretrained(c.clip_arch, c.clip_pretrained, device, c.clip_cache_dir)
        clip_id = f"{c.clip_arch} ({c.clip_pretrained})"
    if c.inception:
        extractor = load_inception(c.inception, device)
        inception_file = Path(c.inception)
    else:
        extractor, inception_file = cleanfid_inception(c.cleanfid_dir, device)
    extractor_id = f"{inception_file.name}-{sha256_file(inception_file)[:12]}"
    return extractor, extractor_id, scorer, clip_id


@dataclass
class SuiteInputs:
    """What the suites read, loaded (or checked) before the model: bad paths fail in seconds."""

    text: TextInputs = field(default_factory=TextInputs)
    shapes_items: list | None = None
    coco_scorers: tuple[Any, str, Any, str] | None = None
    skips: SkipLog = field(default_factory=SkipLog)


def check_inputs(cfg: EvaluateConfig, suites: list[str], device: str) -> SuiteInputs:
    """Every input of `suites`, checked in the order they run; raises `UserError` on the first bad one."""
    from lmfusion_cli.evaluation.shapes_suite import shapes_test_items

    inputs = SuiteInputs()
    if "text" in suites:
        inputs.text, text_skips = _text_inputs(cfg)
        inputs.skips.merge(text_skips)
    if "shapes" in suites and cfg.shapes.data:
        inputs.shapes_items, shapes_skips = shapes_test_items(cfg.shapes.data)
        inputs.skips.merge(shapes_skips)
    if "coco" in suites:
        inputs.coco_scorers = _coco_scorers(cfg, device)
    return inputs
