"""PTB tokenization of captions, as the official COCO caption scorer does it.

The official scorer (pycocoevalcap) runs Stanford CoreNLP 3.4.1's `PTBTokenizer -preserveLines
-lowerCase` (Java) over every caption, then drops the punctuation tokens in
`pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS`. Two back ends give that result here:

- `java`: pycocoevalcap's own `PTBTokenizer` (needs `java` on PATH; ~0.3 s start-up per call);
- `python`: a pure-Python re-implementation of the rules that matter for captions (lower-casing,
  splitting off punctuation and clitics such as `n't` / `'s`, brackets → `-lrb-`..., acronyms and
  common abbreviations keep their period), followed by the same punctuation removal. It agrees with
  the Java tokenizer on the fixture sentences of `tests/evaluation/test_ptb.py` (typical captions and
  the usual tricky cases); rare forms such as `y'all` may still differ.

`auto` picks `java` when it can run (java on PATH, pycocoevalcap's jar installed), else `python`. This module owns tokenization only; the
metrics live in `metrics.py`."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Literal

Backend = Literal["auto", "java", "python"]

# Copied from pycocoevalcap.tokenizer.ptbtokenizer (the official list; note `-LRB-` is upper case while
# the tokenizer lower-cases, so brackets survive as `-lrb-` in the official scorer too).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_BRACKETS = {'"': "''", "(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "jr",
        "sr",
        "vs",
        "etc",
        "inc",
        "co",
        "corp",
        "ltd",
        "mt",
        "ft",
        "ave",
        "gen",
        "col",
        "lt",
        "sgt",
        "capt",
        "gov",
    ]
)
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "gimme": ("gim", "me"),
    "lemme": ("lem", "me"),
    "'tis": ("'t", "is"),
    "'twas": ("'t", "was"),
}
_UNICODE = str.maketrans(
    {
        "\u201c": '"',
        "\u201d": '"',
        "\u2018": "'",
        "\u2019": "'",
        "\u2014": " -- ",
        "\u2013": " -- ",
        "\u2026": "...",
        "\u00a0": " ",
    }
)

_TOKEN = re.compile(
    r"""
    (?P<tag><[a-z/][^<>\s]*>)                          # SGML-like tag: kept whole
  | (?P<split>'tis|'twas)(?![a-z])
  | (?P<keep>'n')(?![a-z])                              # rock 'n' roll
  | (?P<acronym>(?:[a-z]\.){2,})                         # u.s.a., p.m.
  | (?P<number>\d+(?:[.,:/-]\d+)+)                       # 1,000  3:30  3.14  1/2  10-20
  | (?P<word>[a-z0-9]+(?:[-/&@.'][a-z0-9]+)*)
  | (?P<clitic>'(?:s|re|ve|d|ll|m)(?![a-z]))
  | (?P<ellipsis>\.{2,})
  | (?P<dashes>-{2,})
  | (?P<bang>[!?]+)
  | (?P<other>.)
""",
    re.VERBOSE,
)
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'d|'ll|'m)$")


def pycocoevalcap_has(module: str, *parts: str) -> bool:
    """Whether the file `parts`, beside pycocoevalcap's `module` (where that module looks for it), is installed:
    its Java tools' jars and data. An install slimmed to the Python scorers, such as scripts/gpu_wheels.sh
    makes, has none of them."""
    try:
        spec = importlib.util.find_spec(f"pycocoevalcap.{module}")
    except ImportError:
        return False
    return spec is not None and spec.origin is not None and Path(spec.origin).parent.joinpath(*parts).is_file()


def java_tool_available(module: str, *files: str) -> bool:
    """Whether the pycocoevalcap Java tool that `module` runs can run here: `java` on PATH and each of `files`
    ('/'-separated, relative to the module's folder) installed beside it."""
    return shutil.which("java") is not None and all(pycocoevalcap_has(module, *f.split("/")) for f in files)


def java_available() -> bool:
    """Whether the official (Java) PTB tokenizer can run here: `java` on PATH and pycocoevalcap's CoreNLP jar."""
    return java_tool_available("tokenizer.ptbtokenizer", "stanford-corenlp-3.4.1.jar")


def _split_word(word: str) -> list[str]:
    """Tokens of one scanned word: `cannot` → `can not`, clitics (`n't`, `'s`, ...) split off."""
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    m = _CLITIC.match(word)
    if m and "'" not in m.group(1):
        return [m.group(1), m.group(2)]
    return [word]


def tokenize_python(text: str) -> list[str]:
    """PTB tokens of one caption, lower-cased, before punctuation removal (pure Python)."""
    text = text.translate(_UNICODE).lower().replace("\n", " ")
    tokens: list[str] = []
    for chunk in text.split():
        pos = 0
        while pos < len(chunk):
            m = _TOKEN.match(chunk, pos)
            kind, tok = m.lastgroup, m.group()
            end = m.end()
            if kind == "word":
                # "mr." / "etc.": an abbreviation keeps its period (the scanner left it after the word)
                if chunk.startswith(".", end) and tok in _ABBREVIATIONS and not chunk.startswith("..", end):
                    tok, end = tok + ".", end + 1
                tokens.extend(_split_word(tok))
            elif kind == "split":
                tokens.extend(_SPLIT_WORDS[tok])
            elif kind == "other":
                tokens.append(_BRACKETS.get(tok, tok))
            else:
                tokens.append(tok)
            pos = end
    return tokens


def _remove_punctuation(tokens: list[str]) -> str:
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


def _tokenize_java(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # Empty captions are kept out of the Java run: a trailing empty line would shift nothing but be lost.
    nonempty = {k: [{"caption": c} for c in caps if c.strip()] for k, caps in captions.items()}
    nonempty = {k: v for k, v in nonempty.items() if v}
    tokenized = PTBTokenizer().tokenize(nonempty) if nonempty else {}
    out: dict[str, list[str]] = {}
    for key, caps in captions.items():
        done = iter(tokenized.get(key, []))
        out[key] = [next(done) if c.strip() else "" for c in caps]
    return out


def resolve_backend(backend: Backend) -> Literal["java", "python"]:
    if backend == "auto":
        return "java" if java_available() else "python"
    if backend == "java" and not java_available():
        raise RuntimeError(
            "The Java PTB tokenizer needs `java` on PATH and pycocoevalcap's CoreNLP jar; install a JRE "
            "(and a full pycocoevalcap) or use backend='python'."
        )
    if backend not in ("java", "python"):
        raise ValueError(f"tokenizer backend must be 'auto', 'java' or 'python', got {backend!r}")
    return backend


def tokenize_captions(captions: dict[str, list[str]], backend: Backend = "auto") -> dict[str, list[str]]:
    """PTB-tokenize every caption (lower-cased, punctuation removed), keeping keys and order.

    `captions` maps an image id to its caption strings; the result maps it to space-joined tokens,
    exactly the input pycocoevalcap's scorers expect."""
    if resolve_backend(backend) == "java":
        return _tokenize_java(captions)
    return {k: [_remove_punctuation(tokenize_python(c)) for c in caps] for k, caps in captions.items()}
