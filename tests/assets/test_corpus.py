"""The tiny LM's corpus: deterministic, varied, every shapes template, held-out disjoint from training."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from lmfusion_cli.data import corpus, shapes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import lm_corpus  # noqa: E402


def test_documents_depend_only_on_seed_split_kind_index():
    a = corpus.make_document("general", "train", 17, seed=3)
    assert a == corpus.make_document("general", "train", 17, seed=3)
    others = [
        corpus.make_document("general", "train", 17, seed=4),
        corpus.make_document("general", "heldout", 17, seed=3),
        corpus.make_document("general", "train", 18, seed=3),
    ]
    assert all(o.text != a.text for o in others)


def test_heldout_shares_no_sentence_with_training_and_counts_what_it_removed():
    c = lm_corpus.build_corpus(num_captions=400, num_general=800, num_heldout=60, seed=0)
    seen = lm_corpus.training_sentences(c.train)
    for kind in corpus.KINDS:
        assert len(c.heldout[kind]) == 60
        assert all(s not in seen for d in c.heldout[kind] for s in d.sentences)
        assert all(d.kind == kind for d in c.heldout[kind])
    # templated text repeats: the filter really had work to do (it is not vacuous)
    assert c.removed_overlap["captions"] + c.removed_overlap["general"] > 0
    kinds = [d.kind for d in c.train]
    assert kinds.count("captions") == 400 and kinds.count("general") == 800
    assert set(kinds[:30]) == {"captions", "general"}  # interleaved, not one block after the other


def test_captions_are_shapes_captions_from_every_template():
    texts = {corpus.make_document("captions", "train", i).text for i in range(3000)}

    def as_regex(template: str) -> re.Pattern:
        return re.compile("^" + re.sub(r"\\\{[a-z0-9]+\\\}", "[a-z ]+", re.escape(template)) + "$")

    templates = list(shapes.SINGLE_TEMPLATES) + [t for ts in shapes.PAIR_TEMPLATES.values() for t in ts]
    for template in templates:
        pattern = as_regex(template)
        assert any(pattern.match(t) for t in texts), template
    assert all(t == t.lower() and not t.endswith(".") for t in texts)


def test_general_corpus_has_word_variety_and_every_generator():
    docs = lm_corpus.make_documents("general", "train", 6000)
    words = {w for d in docs for w in re.findall(r"[A-Za-z]+", d.text)}
    assert len(words) > 900, len(words)  # MEASURED-NOTES: ~700 words gave a BPE of only ~715 tokens
    rng = np.random.default_rng(0)
    for generator, _ in corpus.GENERAL_GENERATORS:
        sentences = generator(rng)
        assert sentences and all(s[0].isupper() and s[-1] in '.?!"' for s in sentences), generator.__name__


def test_articles_and_facts_are_grammatical():
    assert corpus._a("apple") == "an apple" and corpus._a("ball") == "a ball"
    text = " ".join(corpus.make_document("general", "train", i).text for i in range(2000))
    assert " a apple" not in text and " a orange" not in text and " an red" not in text
    assert re.search(r"(Bananas are yellow|A banana is yellow)", text)
