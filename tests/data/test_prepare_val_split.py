"""Issue 16: prepare holds out at least one validation item when it keeps two or more (5 % of 26 items
rounded to none and training then had no validation split), unless val_fraction is 0."""

from __future__ import annotations

import pytest

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.data.config import PrepareConfig
from lmfusion_cli.data.prepare import run_prepare


@pytest.mark.parametrize("num_items,seed", [(2, 0), (5, 1), (26, 0), (26, 7)])
def test_at_least_one_validation_item(tmp_path, num_items, seed):
    cfg = build_config(
        PrepareConfig, {"out": str(tmp_path / "s"), "num_items": num_items, "seed": seed, "resolution": 16}
    )
    manifest = run_prepare(cfg)
    splits = {name: v["items"] for name, v in manifest["splits"].items()}
    assert splits["val"] >= 1 and sum(splits.values()) == num_items, splits
    assert splits["train"] >= 1


def test_val_fraction_zero_is_respected(tmp_path):
    cfg = build_config(
        PrepareConfig, {"out": str(tmp_path / "s"), "num_items": 5, "seed": 1, "resolution": 16, "val_fraction": 0.0}
    )
    assert run_prepare(cfg)["splits"]["val"]["items"] == 0
