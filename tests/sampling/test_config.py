"""Sampling settings have one owner (issue 21): `sampling/config.py` declares each option and default once;
`SampleConfig` and evaluation's `sampling` section extend it, and one `DecodingOptions` goes down."""

from __future__ import annotations

import dataclasses

import pytest

from lmfusion_cli.common.configs import build_config
from lmfusion_cli.evaluation.config import EvalSamplingConfig, EvaluateConfig
from lmfusion_cli.sampling.config import DecodingOptions, SampleConfig, SamplingSettings, options_of, with_settings


def test_sample_config_is_the_options_plus_its_inputs():
    names = [f.name for f in dataclasses.fields(DecodingOptions)]
    assert [f.name for f in dataclasses.fields(SampleConfig)][: len(names)] == names
    cfg = SampleConfig(checkpoint="c", out="o", prompt="p", steps=7, decoding="top-p", cache=False)
    assert options_of(cfg) == DecodingOptions(steps=7, decoding="top-p", cache=False)


def test_evaluation_settings_give_one_options_object_per_scale():
    cfg = build_config(
        EvaluateConfig,
        {"checkpoint": "c", "out": "o", "suite": "coco", "coco": {"root": "r"}, "sampling": {"cfg_scale": [1, 1.5]}},
    )
    assert isinstance(cfg.sampling, SamplingSettings) and not isinstance(cfg.sampling, DecodingOptions)
    assert [cfg.sampling.options(s).cfg_scale for s in cfg.sampling.scales_for("coco")] == [1.0, 1.5]
    assert cfg.sampling.options(1.5) == DecodingOptions(cfg_scale=1.5)  # the other defaults are the sampling ones
    assert cfg.sampling.options().cfg_scale == DecodingOptions.cfg_scale
    with pytest.raises(ValueError, match="cfg_scale must be distinct"):
        EvalSamplingConfig(cfg_scale=(2.0, 2.0))


def test_keyword_settings_change_single_options_and_errors_name_parameters():
    assert with_settings(None, {}) == DecodingOptions()
    assert with_settings(DecodingOptions(steps=3), {"cfg_scale": 1.0}) == DecodingOptions(steps=3, cfg_scale=1.0)
    with pytest.raises(TypeError, match="use_cache"):
        with_settings(None, {"use_cache": False})
    for bad, name in [({"cfg_scale": -1.0}, "cfg_scale"), ({"sampler": "heun"}, "sampler"), ({"steps": 0}, "steps")]:
        with pytest.raises(ValueError, match=name) as e:
            with_settings(None, bad)
        assert "--" not in str(e.value)
