"""The fused model's text path as an lm-evaluation-harness model, and one call that runs a model on tasks.

`FusedTextLM` (registered in lm-eval as `lmfusion-text`) is lm-eval's own `HFLM` over a module whose
forward is `LMFusionModel.text_logits`: batching, padding, context truncation, the log-likelihood of
each continuation and the metrics are lm-eval's, exactly as for an ordinary Hugging Face model
(`--model hf`). Only the logits come from the routed text path, over the base vocabulary (new
BOI/EOI rows are not text the base can write). The tokenizer is the base's, loaded from its folder
the way `hf` loads it, so the two see the same token ids.

`evaluate_lm(lm, tasks)` runs `lm_eval.simple_evaluate` and returns per task the aggregate metrics
(acc, acc_norm, ...) and the per-request log-likelihoods in a stable order, for comparing models
request by request. This module loads no checkpoint; `stage.py` does."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutput

log = logging.getLogger(__name__)


class TextPath(torch.nn.Module):
    """A Hugging Face-shaped view of a fused model's text path: `forward(input_ids).logits` = `text_logits`."""

    def __init__(self, fused: torch.nn.Module):
        super().__init__()
        self.fused = fused
        self.config = fused.base_config  # the base's config: lm-eval reads model_type and max positions from it
        self.name_or_path = str(getattr(fused, "base_id", ""))

    @property
    def device(self) -> torch.device:
        return next(self.fused.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.fused.parameters()).dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> CausalLMOutput:
        return CausalLMOutput(logits=self.fused.text_logits(input_ids, attention_mask))  # (B, T, V_base)

    def tie_weights(self) -> None:  # HFLM calls it on the models it is given; the fused model's ties are its own
        return None


def _hflm_class():
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM

    global FusedTextLM
    if "FusedTextLM" in globals():
        return FusedTextLM

    @register_model("lmfusion-text")
    class FusedTextLM(HFLM):
        """lm-eval's `HFLM` over `TextPath(fused)`, with the base's tokenizer (`tokenizer`: its folder)."""

        def __init__(self, fused: torch.nn.Module, tokenizer: str, batch_size: int = 8, **kwargs: Any):
            super().__init__(pretrained=TextPath(fused), tokenizer=tokenizer, batch_size=batch_size, **kwargs)

    globals()["FusedTextLM"] = FusedTextLM
    return FusedTextLM


def fused_text_lm(fused: torch.nn.Module, tokenizer: str, batch_size: int = 8, **kwargs: Any):
    """An lm-eval `LM` scoring with the fused model's text path (see the module docstring)."""
    return _hflm_class()(fused, tokenizer, batch_size=batch_size, **kwargs)


def base_lm(path: str, batch_size: int = 8, device: str = "cpu", **kwargs: Any):
    """The base as lm-eval's ordinary `hf` model (`pretrained=<path>`): the reference the fused model must equal."""
    from lm_eval.models.huggingface import HFLM

    from lmfusion_cli.model.llava import is_llava_checkpoint, load_vlm

    if is_llava_checkpoint(str(path)):  # LLaVAFusion: the VLM by its own class (lm-eval's `hf` loads causal LMs)
        dtype = getattr(torch, str(kwargs.pop("dtype", "float32")))
        vlm = load_vlm(str(path), dtype).to(device).eval()
        return HFLM(pretrained=vlm, tokenizer=str(path), batch_size=batch_size, **kwargs)
    return HFLM(pretrained=str(path), batch_size=batch_size, device=device, **kwargs)


@dataclass
class TaskResult:
    metrics: dict[str, float]
    """lm-eval's aggregate metrics of the task (acc, acc_norm, their stderr, ...), filter suffix removed."""
    num_items: int
    """Documents scored."""
    per_item: list[dict[str, Any]] = field(default_factory=list)
    """doc_id, id (the document's own, when it has one), label (an int target), logliks (one per request),
    acc / acc_norm (lm-eval's per-document values), in doc order."""

    def logliks(self) -> list[float]:
        return [ll for row in self.per_item for ll in row["logliks"]]


def evaluate_lm(
    lm: Any, tasks: list[str | dict[str, Any]], task_manager: Any = None, limit: int | None = None
) -> dict[str, TaskResult]:
    """Run lm-eval on `tasks` (names, YAML paths or config dicts) and collect metrics and log-likelihoods."""
    from lm_eval import simple_evaluate

    out = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=task_manager,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
        num_fewshot=None,
    )
    results: dict[str, TaskResult] = {}
    for name, samples in out["samples"].items():
        metrics = {
            k.split(",")[0]: float(v)
            for k, v in out["results"][name].items()
            if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        rows = [_sample_row(s) for s in sorted(samples, key=lambda s: s["doc_id"])]
        results[name] = TaskResult(metrics=metrics, num_items=len(rows), per_item=rows)
    return results


def _sample_row(sample: dict[str, Any]) -> dict[str, Any]:
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    target = sample.get("target")
    row: dict[str, Any] = {
        "doc_id": sample["doc_id"],
        "id": str(doc.get("id", sample["doc_id"])),
        "logliks": [float(r[0]) for r in sample["filtered_resps"]],
    }
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        row["label"] = int(target)
    for metric in ("acc", "acc_norm"):
        if metric in sample:
            row[metric] = float(sample[metric])
    return row
