"""The tiny LM's pretraining corpus, built once by `build_assets.py` (issue 4): not part of the installed package.

Training documents are `lmfusion_cli.data.corpus` documents of both kinds, interleaved evenly. The held-out
split is drawn from its own random stream and then *filtered*: every held-out sentence that also occurs in the
training documents is removed (and counted), so perplexity is measured on sentences the LM has never seen."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lmfusion_cli.data.corpus import KINDS, Document, make_document


def make_documents(kind: str, split: str, count: int, seed: int = 0) -> list[Document]:
    return [make_document(kind, split, i, seed) for i in range(count)]


@dataclass(frozen=True)
class Corpus:
    train: list[Document]
    """Training documents, captions and general interleaved."""
    heldout: dict[str, list[Document]]
    """Held-out documents per kind, with every sentence seen in `train` removed."""
    removed_overlap: dict[str, int]
    """Held-out sentences dropped per kind because they occur in the training documents."""


def build_corpus(num_captions: int, num_general: int, num_heldout: int, seed: int = 0) -> Corpus:
    """Training documents plus per-kind held-out documents disjoint from them at the sentence level."""
    captions = make_documents("captions", "train", num_captions, seed)
    general = make_documents("general", "train", num_general, seed)
    train = interleave(captions, general)
    seen = training_sentences(train)
    heldout: dict[str, list[Document]] = {}
    removed: dict[str, int] = {}
    for kind in KINDS:
        kept_docs, dropped, index = [], 0, 0
        while len(kept_docs) < num_heldout and index < 50 * max(num_heldout, 1):
            doc = make_document(kind, "heldout", index, seed)
            index += 1
            fresh = tuple(s for s in doc.sentences if s not in seen)
            dropped += len(doc.sentences) - len(fresh)
            if fresh:
                kept_docs.append(Document(kind=kind, sentences=fresh))
        heldout[kind], removed[kind] = kept_docs, dropped
    return Corpus(train=train, heldout=heldout, removed_overlap=removed)


def training_sentences(docs: Iterable[Document]) -> set[str]:
    return {s for d in docs for s in d.sentences}


def interleave(a: list[Document], b: list[Document]) -> list[Document]:
    """Merge two lists evenly (deterministic), so any prefix of the result mixes both kinds."""
    total = len(a) + len(b)
    out, ia, ib = [], 0, 0
    for k in range(total):
        if ib >= len(b) or (ia < len(a) and ia * total <= k * len(a)):
            out.append(a[ia])
            ia += 1
        else:
            out.append(b[ib])
            ib += 1
    return out
