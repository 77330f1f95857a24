"""Issue 17 break 1: a checkpoint someone sent you cannot run code on `--resume`.

Each hostile file carries a pickle payload that would create a marker file when unpickled; the
attacker also rewrites the SHA-256 manifest (whoever writes a checkpoint writes its manifest). The
load is refused with one line naming the file, and the marker never appears. A normal checkpoint,
and one whose RNG file has the previous (numpy-pickle) layout, still resume exactly."""

from __future__ import annotations

import io
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))
from toy_workload import ToyWorkload, make_config, toy_factories  # noqa: E402

from lmfusion_cli.common.errors import UserError  # noqa: E402
from lmfusion_cli.common.manifest import MANIFEST_NAME, file_entry  # noqa: E402
from lmfusion_cli.training.checkpointing import Checkpointer  # noqa: E402
from lmfusion_cli.training.distributed import DistContext  # noqa: E402
from lmfusion_cli.training.loop import run_training  # noqa: E402
from lmfusion_cli.training.optim import build_optimizer  # noqa: E402
from lmfusion_cli.training.state import SHARDED, ModelState, OptimizerState, RNGState  # noqa: E402


class Payload:
    """Unpickling this runs `exec`, which writes the marker file (the attack)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("hostile") / "run"
    run_training(make_config(out, train={"save_every": 2, "keep_last": 1}), *toy_factories())
    return out / "checkpoints" / "step-00000006"


def resign(folder: Path) -> None:
    """Rewrite the manifest's hashes the way an attacker who wrote the files would."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"] = {
        str(p.relative_to(folder)): file_entry(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def load_into_fresh(folder: Path, tmp_path: Path) -> dict:
    workload = ToyWorkload()
    optimizer = build_optimizer(
        [(n, p) for n, p in workload.model.named_parameters() if p.requires_grad], make_config(tmp_path).optim
    )
    model = workload.model
    states = {"model": ModelState(model), "optim": OptimizerState(model, optimizer), "rng": RNGState()}
    return Checkpointer(folder.parent, states, DistContext()).load(folder)


def copy_of(step: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "step-00000006"
    shutil.copytree(step, folder)
    return folder


def test_a_hostile_rng_file_is_refused_and_runs_nothing(step, tmp_path):
    folder, marker = copy_of(step, tmp_path), tmp_path / "pwned"
    torch.save(
        {"torch": torch.get_rng_state(), "numpy": Payload(marker), "python": random.getstate()},
        folder / "rng" / "rank-00000.pt",
    )
    resign(folder)
    with pytest.raises(UserError, match=r"rank-00000\.pt holds a reference to the Python object (builtins\.)?exec"):
        load_into_fresh(folder, tmp_path)
    assert not marker.exists()


def test_a_hostile_dcp_metadata_file_is_refused_and_runs_nothing(step, tmp_path):
    folder, marker = copy_of(step, tmp_path), tmp_path / "pwned"
    import pickle

    (folder / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    resign(folder)
    with pytest.raises(UserError, match=r"\.metadata holds a reference to the Python object (builtins\.)?exec"):
        load_into_fresh(folder, tmp_path)
    assert not marker.exists()


def test_a_hostile_non_tensor_dcp_entry_is_refused_and_runs_nothing(step, tmp_path):
    """DCP stores non-tensor values (the optimiser's lr, betas) as pickles; its own planner loads them
    with weights_only=False. Here one of them is the payload, written through DCP itself."""
    folder, marker = copy_of(step, tmp_path), tmp_path / "pwned"
    workload = ToyWorkload()
    optimizer = build_optimizer(
        [(n, p) for n, p in workload.model.named_parameters() if p.requires_grad], make_config(tmp_path).optim
    )
    model_sd, optim_sd = get_state_dict(workload.model, optimizer, options=SHARDED)
    optim_sd["param_groups"][0]["lr"] = Payload(marker)
    shutil.rmtree(folder / "dcp")
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / "dcp"), no_dist=True)
    resign(folder)
    assert not marker.exists()
    with pytest.raises(
        UserError, match=r"optim\.param_groups\.0\.lr holds a reference to the Python object (builtins\.)?exec"
    ):
        load_into_fresh(folder, tmp_path)
    assert not marker.exists()


def test_a_dcp_shard_entry_pointing_outside_its_folder_is_refused(step, tmp_path):
    import pickle

    folder = copy_of(step, tmp_path)
    metadata = pickle.loads((folder / "dcp" / ".metadata").read_bytes())
    for info in metadata.storage_data.values():
        info.relative_path = "../../../etc/passwd"
    (folder / "dcp" / ".metadata").write_bytes(pickle.dumps(metadata))
    resign(folder)
    with pytest.raises(UserError, match=r"shard entry pointing outside its folder"):
        load_into_fresh(folder, tmp_path)


def test_rng_files_hold_only_tensors_and_numbers(step):
    state = torch.load(step / "rng" / "rank-00000.pt", weights_only=True)  # no allow-list needed
    assert state["format"] == 2 and isinstance(state["numpy"]["keys"], torch.Tensor)


def test_an_rng_file_of_the_previous_format_still_resumes_exactly(step, tmp_path):
    """Format 1 (numpy arrays pickled inside) is migrated through the weights-only unpickler."""
    folder = copy_of(step, tmp_path)
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    buf = io.BytesIO()
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}, buf)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    (folder / "rng" / "rank-00000.pt").write_bytes(buf.getvalue())
    resign(folder)
    torch.manual_seed(0)
    load_into_fresh(folder, tmp_path)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_resume_restores_every_rng_exactly(step, tmp_path):
    from lmfusion_cli.training.safe_load import rng_state, set_rng_state

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    saved = rng_state()
    expected = (torch.rand(2), np.random.randn(2), random.gauss(0, 1), random.gauss(0, 1))
    set_rng_state(saved)
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.randn(2), expected[1]) and (random.gauss(0, 1), random.gauss(0, 1)) == expected[2:]


def test_train_resume_from_a_hostile_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    """The attack as issue 17 ran it: a checkpoint copied into a run folder, then `--resume auto`."""
    from reliability_helpers import build_tiny_base, cli, error_line, train_args, write_fake_cache

    base, cache, out = build_tiny_base(tmp_path / "base"), write_fake_cache(tmp_path / "lat"), tmp_path / "run"
    assert cli(*train_args(base, cache, out, 1)) == 0
    folder, marker = out / "checkpoints" / "step-00000001", tmp_path / "pwned"
    torch.save(
        {"torch": torch.get_rng_state(), "numpy": Payload(marker), "python": random.getstate()},
        folder / "rng" / "rank-00000.pt",
    )
    resign(folder)
    capsys.readouterr()
    assert cli(*train_args(base, cache, out, 2), "--resume", "auto") == 2
    assert "rank-00000.pt holds a reference to the Python object" in error_line(capsys)
    assert not marker.exists()


def test_a_base_bin_with_a_payload_runs_nothing(tmp_path):
    """A base's `pytorch_model.bin` is read by transformers weights-only: the payload is refused."""
    from reliability_helpers import build_tiny_base
    from safetensors.torch import load_file

    from lmfusion_cli.model.fusion import LMFusionModel

    base, marker = build_tiny_base(tmp_path / "base"), tmp_path / "pwned"
    weights = load_file(str(base / "model.safetensors"))
    (base / "model.safetensors").unlink()
    torch.save({**weights, "extra": Payload(marker)}, base / "pytorch_model.bin")
    # one sentence for every stage that builds the model from a base (train, sample, evaluate, export)
    with pytest.raises(UserError, match="has a weights file that is not plain tensors"):
        LMFusionModel.from_base(str(base), latent_size=8, latent_channels=4)
    assert not marker.exists()


def test_train_on_a_base_bin_with_a_payload_is_one_line(tmp_path, capsys):
    from reliability_helpers import build_tiny_base, cli, error_line, train_args, write_fake_cache
    from safetensors.torch import load_file

    base, marker = build_tiny_base(tmp_path / "base"), tmp_path / "pwned"
    weights = load_file(str(base / "model.safetensors"))
    (base / "model.safetensors").unlink()
    torch.save({**weights, "extra": Payload(marker)}, base / "pytorch_model.bin")
    capsys.readouterr()
    assert cli(*train_args(base, write_fake_cache(tmp_path / "lat"), tmp_path / "run", 1)) == 2
    assert "has a weights file that is not plain tensors" in error_line(capsys)
    assert not marker.exists()
