"""Model tests use tiny models: one intra-op thread is fastest and keeps a shared 2-core CI fair
(two threads under contention made a training step 20x slower)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
