"""The text suite: multiple-choice accuracy by log-likelihood (HellaSwag / SIQA / WinoGrande / PIQA style).

Each item is a context and N choices; the model's answer is the choice whose continuation
(`delimiter + choice`) has the highest log-likelihood given the context: the sum of its tokens'
log-probabilities (`accuracy`), or that sum divided by the continuation's length in UTF-8 bytes
(`accuracy_norm`, the lm-evaluation-harness `acc_norm` convention).

Items come from local JSONL (`{"context": ..., "choices": [...], "label": i}`, other field names via
a `FieldMap`) or from a `datasets` dataset saved on disk (`save_to_disk`). Scoring takes a callable
`logits_fn(input_ids, attention_mask) -> logits (B, T, V)`, so the base Hugging Face LM
(`hf_logits_fn(model)`) and the fused model (`lambda ids, mask: model.text_logits(ids, mask)`) plug
in alike; `compare_models` runs several side by side and reports whether they agree exactly, which
LMFusion's frozen text path promises.

The templated set for the shipped tiny LM (`data/tiny_mc.jsonl`) is made by `build_tiny_mc_set`
(`text_data.py`). This module does no model loading."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.common.manifest import SkipLog
from lmfusion_cli.common.progress import progress

log = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
        raise UserError(f"The multiple-choice file {path} does not exist; pass a JSONL file with "
                        f'{{"context", "choices", "label"}} lines.')
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


def load_hf_disk(path: str | Path, fields: FieldMap = FieldMap(), split: str | None = None) -> tuple[list[MCItem], SkipLog]:
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


def hf_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """`logits_fn` of a Hugging Face causal LM."""
    return lambda input_ids, attention_mask: model(input_ids=input_ids, attention_mask=attention_mask).logits


@dataclass(frozen=True)
class _Request:
    item: int
    choice: int
    context_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def build_requests(items: Sequence[MCItem], tokenizer: Any, delimiter: str = " ",
                   max_length: int | None = None) -> list[_Request]:
    """Token ids of (context, continuation) for every item × choice; contexts cut on the left to fit."""
    requests = []
    for i, item in enumerate(items):
        context_ids = _encode(tokenizer, item.context, special=True)
        if not context_ids:  # an empty context still needs one token to predict the first continuation token
            bos = getattr(tokenizer, "bos_token_id", None)
            bos = getattr(tokenizer, "eos_token_id", None) if bos is None else bos
            if bos is None:
                raise ValueError(f"item {item.id}: empty context and the tokenizer has no BOS/EOS token")
            context_ids = [bos]
        for c, choice in enumerate(item.choices):
            cont = _encode(tokenizer, delimiter + choice, special=False)
            if not cont:
                raise ValueError(f"item {item.id}: choice {c} encodes to no tokens")
            ctx = context_ids
            if max_length is not None and len(ctx) + len(cont) > max_length:
                ctx = ctx[-max(max_length - len(cont), 1):]
            requests.append(_Request(i, c, tuple(ctx), tuple(cont)))
    return requests


@torch.no_grad()
def continuation_logliks(requests: Sequence[_Request], logits_fn: LogitsFn, pad_id: int = 0, batch_size: int = 8,
                         device: str | torch.device = "cpu", desc: str = "text suite") -> list[float]:
    """Σ log p(continuation token | prefix) per request, in float64, batched with right padding.

    Right padding keeps every real token's position and causal prefix unchanged, so a batch gives
    what one request alone gives (up to float reassociation in the matmuls)."""
    order = sorted(range(len(requests)), key=lambda r: -len(requests[r].context_ids + requests[r].continuation_ids))
    out = [0.0] * len(requests)
    bar = progress(total=len(requests), desc=desc, unit="choice")
    for start in range(0, len(order), batch_size):
        batch = [requests[r] for r in order[start:start + batch_size]]
        seqs = [r.context_ids + r.continuation_ids for r in batch]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, :len(s)] = torch.tensor(s)
            mask[b, :len(s)] = 1
        logits = logits_fn(ids.to(device), mask.to(device)).double()       # (B, T, V)
        logprobs = torch.log_softmax(logits, dim=-1).cpu()
        for b, req in enumerate(batch):
            n_ctx, n_cont = len(req.context_ids), len(req.continuation_ids)
            targets = torch.tensor(req.continuation_ids)                   # (n_cont,)
            rows = logprobs[b, n_ctx - 1:n_ctx - 1 + n_cont]               # (n_cont, V): row t predicts token t+1
            out[order[start + b]] = float(rows.gather(1, targets[:, None]).sum())
        bar.update(len(batch))
    bar.close()
    return out


@dataclass
class MCResult:
    accuracy: float
    """Fraction right by summed log-likelihood."""
    accuracy_norm: float
    """Fraction right by log-likelihood per UTF-8 byte of the continuation."""
    per_item: list[dict[str, Any]] = field(default_factory=list)
    """id, label, logliks (per choice), pred, pred_norm for each item."""

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "accuracy_norm": self.accuracy_norm, "num_items": len(self.per_item),
                "per_item": self.per_item}


def score_items(items: Sequence[MCItem], logits_fn: LogitsFn, tokenizer: Any, batch_size: int = 8,
                delimiter: str = " ", max_length: int | None = None, device: str | torch.device = "cpu",
                desc: str = "text suite") -> MCResult:
    """Multiple-choice accuracy of one model (see the module docstring)."""
    if not items:
        raise ValueError("no items to score")
    requests = build_requests(items, tokenizer, delimiter, max_length)
    pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    logliks = continuation_logliks(requests, logits_fn, pad_id, batch_size, device, desc)
    per_choice: dict[int, list[float]] = {}
    for req, ll in zip(requests, logliks):
        per_choice.setdefault(req.item, []).append(ll)
    per_item, right, right_norm = [], 0, 0
    for i, item in enumerate(items):
        lls = per_choice[i]
        normed = [ll / len((delimiter + c).encode("utf-8")) for ll, c in zip(lls, item.choices)]
        pred = max(range(len(lls)), key=lls.__getitem__)
        pred_norm = max(range(len(normed)), key=normed.__getitem__)
        right += pred == item.label
        right_norm += pred_norm == item.label
        per_item.append({"id": item.id, "label": item.label, "logliks": lls, "pred": pred, "pred_norm": pred_norm})
    return MCResult(accuracy=right / len(items), accuracy_norm=right_norm / len(items), per_item=per_item)


def compare_models(items: Sequence[MCItem], logits_fns: Mapping[str, LogitsFn], tokenizer: Any,
                   **score_kwargs: Any) -> dict[str, Any]:
    """Score several models on the same items; say whether their per-item log-likelihoods are identical.

    Returns {"models": {name: MCResult.to_dict()}, "identical": bool, "max_abs_diff": float}, the
    comparison being against the first model given."""
    results = {name: score_items(items, fn, tokenizer, desc=f"text suite: {name}", **score_kwargs)
               for name, fn in logits_fns.items()}
    names = list(results)
    first = [ll for it in results[names[0]].per_item for ll in it["logliks"]]
    max_diff = 0.0
    for name in names[1:]:
        other = [ll for it in results[name].per_item for ll in it["logliks"]]
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(first, other)))
    return {"models": {n: r.to_dict() for n, r in results.items()}, "identical": max_diff == 0.0,
            "max_abs_diff": max_diff}
