"""PTB tokenization: the pure-Python back end agrees with the official Java tokenizer of pycocoevalcap."""

from __future__ import annotations

import pytest

from lmfusion_cli.data import shapes
from lmfusion_cli.evaluation.ptb import java_available, resolve_backend, tokenize_captions, tokenize_python

FIXTURE = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs' toys aren't here, don't you think?",
    'The cat\'s "favorite" spot (near the window) -- really!',
    "A black-and-white photo of 1,000 people at 3:30 p.m.",
    "He said 'hello' and left... Then: nothing; ok?",
    "A/B testing & stuff @ home #1 $5 50% e-mail U.S.A. etc.",
    "I can't won't shouldn't it's we're they've I'd you'll I'm",
    "  Multiple   spaces\tand tab  ",
    "cannot gonna gimme wanna lemme 'tis",
    "{curly} [square] <angle> a*b a=b",
    "Mr. Smith and Dr. Jones vs. the U.S. team.",
    "rock 'n' roll o'clock ma'am",
    "A DOG RUNS FAST!!!",
    "3.14 is pi, 1/2 is half, 10-20 range",
    "\u201cSmart quotes\u201d and \u2018single\u2019 \u2014 dash \u2013 en",
    "A kitchen with a stove, a sink, and a refrigerator.",
    "Someone's laptop sits on the desk next to a cup of coffee.",
    "There's a train coming down the tracks!",
    "What is this? A cat on a couch?",
    '"A sign that reads ""stop"" on a pole"',
    "The boys' bikes are parked outside.",
    "A woman is cutting a cake.There are candles.",
    "Bowl of fruit: apples, bananas, and oranges",
    "A dog - a big one - runs",
    "",
]


def _fixture() -> dict[str, list[str]]:
    caps = {f"f{i}": [s] for i, s in enumerate(FIXTURE)}
    caps["shapes"] = [shapes.make_item(i, seed=3, resolution=16).caption.capitalize() + "." for i in range(30)]
    return caps


def test_python_rules_on_known_cases():
    assert tokenize_python("Don't (stop) the U.S. team.") == [
        "do",
        "n't",
        "-lrb-",
        "stop",
        "-rrb-",
        "the",
        "u.s.",
        "team",
        ".",
    ]
    assert tokenize_captions({"a": ["A dog, running!", ""]}, "python") == {"a": ["a dog running", ""]}


@pytest.mark.skipif(not java_available(), reason="needs java for the official tokenizer")
def test_python_backend_matches_java_on_fixture():
    caps = _fixture()
    java = tokenize_captions(caps, "java")
    python = tokenize_captions(caps, "python")
    assert java.keys() == python.keys()
    for key in caps:
        assert python[key] == java[key], (key, caps[key])


@pytest.mark.skipif(not java_available(), reason="needs java for the official tokenizer")
def test_java_backend_is_pycocoevalcaps_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    caps = {k: v for k, v in _fixture().items() if all(c.strip() for c in v)}
    official = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in caps.items()})
    assert tokenize_captions(caps, "java") == official


def test_backend_choice(monkeypatch):
    assert resolve_backend("python") == "python"
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert resolve_backend("auto") == "python"
    with pytest.raises(RuntimeError, match="java"):
        resolve_backend("java")
    with pytest.raises(ValueError):
        resolve_backend("perl")  # type: ignore[arg-type]
