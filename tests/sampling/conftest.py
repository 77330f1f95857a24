"""Session fixtures of the sampling tests (builders live in `sampling_helpers.py`)."""

from __future__ import annotations

import pytest
from sampling_helpers import make_model, make_tokenizer, make_vae

from lmfusion_cli.common.vae import LatentCodec


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def model(tokenizer):
    return make_model(tokenizer)


@pytest.fixture(scope="session")
def codec():
    return LatentCodec(make_vae(), scaling_factor=1.3, shift_factor=0.1)
