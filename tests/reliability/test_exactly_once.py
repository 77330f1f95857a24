"""Issue 12 item 3: exactly-once data, on the training stream (`training/loader.py`) over a latent
cache on disk.

- the stream's state after n steps → a stream rebuilt on a freshly opened cache yields the same next
  batches (keys, tasks, captions, noise seeds, latent draws), for n before, at and across an epoch
  boundary (12 items, batches of 5: epochs end mid-batch);
- the same with the batch split over 2 and 3 processes, and a 1-process state resumed on 2 processes;
- over each epoch every item is seen exactly once, for several seeds.

The training stream has no worker processes (each training process reads its share synchronously;
its whole state is one integer), so "0 and 2 workers" is tested as 1, 2 and 3 training processes."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from reliability_helpers import write_fake_cache

from lmfusion_cli.data.latents import open_latent_cache
from lmfusion_cli.training.loader import SampleStream

BATCH = 5


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return write_fake_cache(tmp_path_factory.mktemp("once") / "lat")  # 12 train items


def stream(cache_dir, seed: int = 7) -> SampleStream:
    return SampleStream(
        open_latent_cache(cache_dir, splits="train"), seed, generation_fraction=0.5, caption_dropout=0.3
    )


def view(samples) -> list[tuple]:
    return [(s.key, s.task, s.caption, s.noise_seed, s.position, s.latent) for s in samples]


def same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x[:5] == y[:5] and torch.equal(x[5], y[5]) for x, y in zip(a, b))


BATCH_W = {1: BATCH, 2: 6, 3: 6}  # global batch per world size: divisible by the process count


@pytest.mark.parametrize("steps_before", [0, 1, 2, 3, 5])  # 12 items: epoch 1 starts inside step 3
def test_rebuilt_stream_yields_the_same_next_batches(cache_dir, steps_before):
    first = stream(cache_dir)
    for _ in range(steps_before):
        first.next_step(BATCH)
    state = dict(first.state_dict())
    expected = [view(first.next_step(BATCH)) for _ in range(3)]
    rebuilt = stream(cache_dir)  # a new process: the cache reopened, nothing shared
    rebuilt.load_state_dict(state)
    assert all(same(view(rebuilt.next_step(BATCH)), e) for e in expected)
    assert state["consumed"] == steps_before * BATCH


@pytest.mark.parametrize("world_size", [2, 3])
def test_process_shares_resume_to_the_same_global_batches(cache_dir, world_size):
    batch = BATCH_W[world_size]
    single = stream(cache_dir)
    single.next_step(batch)
    single.next_step(batch)  # 12 consumed: the next step starts epoch 1
    state = dict(single.state_dict())
    expected = [view(single.next_step(batch)) for _ in range(3)]
    for step, want in enumerate(expected):
        shares = []
        for rank in range(world_size):  # each process rebuilt from the 1-process state
            s = stream(cache_dir)
            s.load_state_dict({**state, "consumed": state["consumed"] + step * batch})
            shares += view(s.next_step(batch, rank, world_size))
        assert same(shares, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_item_is_seen_once_per_epoch(cache_dir, seed):
    s = stream(cache_dir, seed)
    n = len(s.source)
    positions = [x for _ in range(3 * n // BATCH + 1) for x in view(s.next_step(BATCH))]
    keys = {k for k, *_ in positions}
    assert len(keys) == n
    for epoch in range(3):
        seen = Counter(x[0] for x in positions if epoch * n <= x[4] < (epoch + 1) * n)
        assert set(seen.values()) == {1} and len(seen) == n
    orders = [[x[0] for x in positions if e * n <= x[4] < (e + 1) * n] for e in range(2)]
    assert orders[0] != orders[1]  # reshuffled each epoch, not one fixed order
