"""The one launcher (`common/launch.py`): torchrun's environment in every process, failures named by rank."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lmfusion_cli.common.launch import LaunchFailed, launch_local, launched_rank

sys.path.insert(0, str(Path(__file__).resolve().parent))

import launch_workers  # noqa: E402


def test_launched_rank_reads_torchrun_and_slurm_variables():
    assert launched_rank({}) == launched_rank({"WORLD_SIZE": "1"})
    place = launched_rank({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (place.rank, place.world_size, place.local_rank) == (5, 8, 1)
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1"}
    assert launched_rank(slurm) == type(place)(rank=3, world_size=4, local_rank=1)


@pytest.mark.slow
def test_launch_local_gives_each_process_its_rank_and_reports_the_failed_ones():
    results = launch_local(launch_workers.report_place, ("x",), 2)
    assert sorted(results) == [0, 1]
    assert [results[r][:4] for r in (0, 1)] == [("x", 0, 2, 0), ("x", 1, 2, 1)]
    assert results[0][4] == results[1][4]  # one rendezvous, on one port
    with pytest.raises(LaunchFailed) as failed:
        launch_local(launch_workers.fail_on_rank_1, (), 2)
    assert failed.value.exit_codes == {1: 2} and failed.value.world_size == 2
