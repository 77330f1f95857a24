"""The text suite: loading items, log-likelihood scoring (batched == one by one), base vs fused comparison."""

from __future__ import annotations

import json

import pytest
import torch

from lmfusion_cli.common.errors import UserError
from lmfusion_cli.evaluation.text_data import TINY_MC_PATH, build_tiny_mc_set, to_jsonl
from lmfusion_cli.evaluation.text_suite import (FieldMap, MCItem, build_requests, compare_models, hf_logits_fn,
                                                load_hf_disk, load_jsonl, score_items)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w.strip(",") for it in build_tiny_mc_set() for t in [it["context"], *it["choices"]]
                    for w in t.split()} | {","})
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]")


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def items():
    return load_jsonl(TINY_MC_PATH)[0][::12]  # every kind of item, few enough for 2 busy cores


def test_shipped_set_is_reproducible_and_clean():
    assert TINY_MC_PATH.read_text() == to_jsonl(build_tiny_mc_set())
    items, skips = load_jsonl(TINY_MC_PATH)
    assert len(items) >= 200 and skips.num_skipped == 0
    assert {i.id.split("-")[0] for i in items} == {"caption", "counting", "arithmetic", "fact"}
    assert all(len(set(i.choices)) == len(i.choices) for i in items)


def test_jsonl_bad_lines_are_counted_not_fatal(tmp_path):
    path = tmp_path / "mc.jsonl"
    lines = [json.dumps({"context": "a", "choices": ["b", "c"], "label": 1}), "{not json",
             json.dumps({"context": "a", "choices": ["b", "c"]}), json.dumps({"context": "a", "choices": ["b"], "label": 0}),
             json.dumps({"context": "a", "choices": ["b", "c"], "label": 5}), "", json.dumps([1, 2])]
    path.write_text("\n".join(lines) + "\n")
    items, skips = load_jsonl(path)
    assert [(i.id, i.label) for i in items] == [("mc.jsonl:1", 1)]
    assert skips.counts()["skipped"] == {"bad-item": 3, "invalid-json": 1, "missing-field": 1}
    with pytest.raises(UserError, match="does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")
    path.write_text("{oops\n")
    with pytest.raises(UserError, match="no usable"):
        load_jsonl(path)


def test_field_maps_and_hf_disk(tmp_path):
    import datasets

    piqa = datasets.Dataset.from_dict({"goal": ["open a jar", "dry hair"], "sol1": ["twist the lid", "use a towel"],
                                       "sol2": ["eat the lid", "use a fork"], "answer": ["1", "1"]})
    datasets.DatasetDict({"validation": piqa}).save_to_disk(str(tmp_path / "piqa"))
    fields = FieldMap(context="goal", choices=("sol1", "sol2"), label="answer", label_offset=1)
    items, skips = load_hf_disk(tmp_path / "piqa", fields, split="validation")
    assert items[0] == MCItem(id="0", context="open a jar", choices=("twist the lid", "eat the lid"), label=0)
    with pytest.raises(UserError, match="splits"):
        load_hf_disk(tmp_path / "piqa", fields)
    with pytest.raises(UserError, match="save_to_disk"):
        load_hf_disk(tmp_path / "missing", fields)
    hella = datasets.Dataset.from_dict({"ctx": ["x"], "endings": [["a", "b", "c"]], "label": [2], "ind": [77]})
    hella.save_to_disk(str(tmp_path / "hella"))
    (item,), _ = load_hf_disk(tmp_path / "hella", FieldMap(context="ctx", choices=("endings",), id="ind"))
    assert item.id == "77" and item.label == 2 and item.choices == ("a", "b", "c")


def _manual_loglik(model, tokenizer, context: str, continuation: str) -> float:
    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0]
    return float(sum(logprobs[len(ctx) - 1 + t, tok] for t, tok in enumerate(cont)))


def test_batched_equals_one_by_one_and_manual(model, tokenizer, items):
    fn = hf_logits_fn(model)
    batched = score_items(items, fn, tokenizer, batch_size=16)
    single = score_items(items, fn, tokenizer, batch_size=1)
    for a, b in zip(batched.per_item, single.per_item):
        assert a["logliks"] == pytest.approx(b["logliks"], abs=1e-5)
    assert batched.accuracy == single.accuracy
    item = items[3]
    for c, choice in enumerate(item.choices):
        assert single.per_item[3]["logliks"][c] == pytest.approx(_manual_loglik(model, tokenizer, item.context, " " + choice), abs=1e-6)
    for it, res in zip(items, batched.per_item):  # accuracies are the argmaxes of the stated log-likelihoods
        norm = [ll / len((" " + c).encode()) for ll, c in zip(res["logliks"], it.choices)]
        assert res["pred"] == max(range(len(it.choices)), key=res["logliks"].__getitem__)
        assert res["pred_norm"] == max(range(len(it.choices)), key=norm.__getitem__)
    assert batched.accuracy == sum(r["pred"] == r["label"] for r in batched.per_item) / len(items)


def test_an_oracle_model_scores_perfectly(tokenizer, items):
    """A lookup 'model' that knows each right sequence: catches off-by-one alignment of logits and targets."""
    contexts = [it.context for it in items]
    items = [it for it in items if contexts.count(it.context) == 1]  # one right answer per prefix
    good = {}
    for it in items:
        seq = build_requests([it], tokenizer)[it.label]
        full = seq.context_ids + seq.continuation_ids
        for t in range(len(seq.context_ids), len(full)):
            good[tuple(full[:t])] = full[t]

    def oracle(input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, len(tokenizer))
        for b in range(input_ids.shape[0]):
            n = int(attention_mask[b].sum())
            for t in range(n):
                nxt = good.get(tuple(input_ids[b, :t + 1].tolist()))
                if nxt is not None:
                    logits[b, t, nxt] = 20.0
        return logits

    res = score_items(items, oracle, tokenizer, batch_size=7)
    assert len(items) > 20 and res.accuracy == 1.0 and res.accuracy_norm == 1.0


def test_max_length_cuts_context_on_the_left(model, tokenizer):
    item = MCItem("x", "a large purple square at the bottom of a white", ("image", "left"), 0)
    fn = hf_logits_fn(model)
    cut = score_items([item], fn, tokenizer, max_length=4).per_item[0]["logliks"]
    req = build_requests([item], tokenizer, max_length=4)
    assert all(len(r.context_ids) + len(r.continuation_ids) <= 4 for r in req)
    assert list(req[0].context_ids) == tokenizer(item.context)["input_ids"][-3:]  # "of a white": 3 + 1 = 4 tokens
    ids = torch.tensor([list(req[0].context_ids + req[0].continuation_ids)])
    with torch.no_grad():
        manual = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0, 2, req[0].continuation_ids[0]]
    assert cut[0] == pytest.approx(float(manual), abs=1e-6)
    assert cut != score_items([item], fn, tokenizer).per_item[0]["logliks"]


def test_compare_models_reports_identity_and_difference(model, tokenizer, items):
    fn = hf_logits_fn(model)
    wrapped = lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits.clone()  # noqa: E731
    same = compare_models(items[:10], {"base": fn, "fused": wrapped}, tokenizer, batch_size=4)
    assert same["identical"] and same["max_abs_diff"] == 0.0
    assert same["models"]["base"]["per_item"] == same["models"]["fused"]["per_item"]
    shifted = lambda ids, mask: fn(ids, mask) + 1e-3 * torch.arange(len(tokenizer))  # noqa: E731
    diff = compare_models(items[:10], {"base": fn, "other": shifted}, tokenizer, batch_size=4)
    assert not diff["identical"] and diff["max_abs_diff"] > 0
