"""benchmarks/gpu_issue22.py (issue 22's GPU measurements), run in its CPU smoke mode: every case runs real
training steps of the tiny model and is compared with `lmfusion plan`, and the JSON holds every case."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_issue22.py"


def run(tmp_path: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "gpu_issue22.json").read_text())


def case_names() -> list[str]:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_issue22
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return [name for name, *_ in gpu_issue22.CASES]


def test_cpu_tiny_mode_measures_every_case_against_the_plan(tmp_path):
    result = run(tmp_path, "--steps", "1")
    names = case_names()
    assert {"1b-flex-every2", "1b-flex-none", "1b-sdpa-none", "8b2-flex-none", "8b4-flex-layers"} <= set(names)
    assert [c["name"] for c in result["cases"]] == names
    for case in result["cases"]:
        assert case["status"] == "ok", (case["name"], case.get("error"), case.get("traceback"))
        assert case["tokens_per_s"] > 0 and case["median_step_s"] > 0
        assert all(case["steps_applied"]) and all(math.isfinite(x) for x in case["losses"])
        assert case["tokens_per_step"] == case["text_tokens"] + case["image_tokens"]
        assert case["rows"] >= 1 and case["row_length"] == 128  # packed rows of data.seq_len (tiny)
        plan = case["plan"]
        assert plan["params_total"] == case["params_total"]  # the plan counts the very model that trained
        assert plan["params_trainable"] == case["params_trainable"]
        assert case["peak_allocated_bytes"] > 0 and 0.1 < case["ratio_peak_allocated_over_plan_tensors"] < 10
        assert case["mfu_plan_formula"] > 0 and case["ratio_tokens_per_s_measured_over_plan"] > 0
        if case["requested_attention"] == "flex":  # no flex backward on CPU: trained with sdpa, and says so
            assert case["attention"] == "sdpa" and "flex has no backward on CPU" in case["note"]
        if case["attention"] == "sdpa":  # one step counted (the CPU sdpa kernel has no formula in the counter)
            assert case["flops_counted"] > 0 and "attention is uncounted" in case["flops_counted_note"]
    layers = {c["name"]: c["layers"] for c in result["cases"]}
    assert layers["8b2-flex-none"] == 2 and layers["8b4-flex-none"] == 4
    assert {"flex_over_sdpa_1b", "8b_per_layer_flex_none", "8b_per_layer_flex_layers"} <= set(result["summary"])
    table = (tmp_path / "gpu_issue22.md").read_text()
    assert all(f"| {name} |" in table for name in names)


def test_budget_skips_cases_and_still_writes_the_results(tmp_path):
    result = run(tmp_path, "--budget-s", "0", "--cases", "1b-sdpa-none,8b2-flex-none")
    assert [(c["name"], c["status"]) for c in result["cases"]] == [
        ("1b-sdpa-none", "skipped"),
        ("8b2-flex-none", "skipped"),
    ]
    assert "--budget-s" in result["cases"][0]["reason"]
    assert "skipped" in (tmp_path / "gpu_issue22.md").read_text()
