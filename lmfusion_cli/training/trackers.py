"""Experiment trackers named in `log.report_to`: TensorBoard, Weights & Biases, MLflow (issue 16).

Each is imported only when asked for; a missing package is one sentence with its install command,
before anything is written. All get the same three things, on rank 0 only:
- the hyperparameters (the resolved run config, flattened to dotted keys) once at the start;
- every JSONL record's numbers as scalars (`train/…`, `val/…`), at its step;
- images (the validation grid, `val/grid`) at their step.
`logs/train.jsonl` is always written (`train_log.py`); trackers are extra views of the same records.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from lmfusion_cli.common.errors import UserError

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "mlflow")
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config → {"optim.lr": 3e-4, ...}; lists and tuples become strings (trackers want scalars)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, (list, tuple)):
        data = str(list(data))
    return {prefix.rstrip("."): data}


def check_available(names: tuple[str, ...]) -> None:
    """Refuse (one sentence naming the install command) a tracker whose package is not installed."""
    for name in names:
        module, package = _PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"log.report_to names {name} but the {package} package is not installed; run "
                f"`pip install {package}` or remove {name} from log.report_to."
            )


class _TensorBoard:
    def __init__(self, run_dir: Path, start_step: int, params: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "logs" / "tb"), purge_step=start_step + 1)
        text = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self.writer.add_text("hyperparameters", "| key | value |\n|---|---|\n" + text, start_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, name: str, array: np.ndarray, step: int) -> None:
        self.writer.add_image(name, array, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, start_step: int, params: dict[str, Any], project: str, run_name: str):
        import wandb

        # id = the run folder's name: a resume continues the same W&B run
        self.run = wandb.init(
            project=project,
            name=run_name,
            id=_safe_id(run_name),
            resume="allow",
            dir=str(run_dir / "logs"),
            config=params,
        )

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, name: str, array: np.ndarray, step: int) -> None:
        import wandb

        self.run.log({name: wandb.Image(array)}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, run_dir: Path, start_step: int, params: dict[str, Any], project: str, run_name: str):
        import mlflow

        self.mlflow = mlflow
        if not _env_uri():  # default: a file store inside the run folder
            mlflow.set_tracking_uri((run_dir / "logs" / "mlruns").resolve().as_uri())
        mlflow.set_experiment(project)
        self.run = mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in values.items()}, step=step)

    def image(self, name: str, array: np.ndarray, step: int) -> None:
        self.mlflow.log_image(array, key=name.replace("/", "_"), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _env_uri() -> bool:
    import os

    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def _safe_id(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:64]


class Trackers:
    """The trackers of `log.report_to`, fed by `TrainLogger`; does nothing when the list is empty."""

    def __init__(
        self, names: tuple[str, ...], run_dir: Path, start_step: int, params: dict[str, Any], project: str = "lmfusion"
    ):
        check_available(names)
        run_name = run_dir.resolve().name
        self.backends: list[Any] = []
        for name in names:
            if name == "tensorboard":
                self.backends.append(_TensorBoard(run_dir, start_step, params))
            elif name == "wandb":
                self.backends.append(_WandB(run_dir, start_step, params, project, run_name))
            elif name == "mlflow":
                self.backends.append(_MLflow(run_dir, start_step, params, project, run_name))

    def record(self, record: dict[str, Any]) -> None:
        """A JSONL record's numbers as `train/…` or `val/…` scalars at its step."""
        if not self.backends or "step" not in record:
            return
        prefix = "val/" if record.get("event") == "val" else "train/"
        values = {
            prefix + k: float(v)
            for k, v in record.items()
            if k not in ("step", "event") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if values:
            for backend in self.backends:
                backend.scalars(values, int(record["step"]))

    def image(self, name: str, array: np.ndarray, step: int) -> None:
        """array: (H, W, 3) uint8."""
        for backend in self.backends:
            backend.image(name, array, step)

    @property
    def wants_images(self) -> bool:
        return bool(self.backends)

    def close(self) -> None:
        for backend in self.backends:
            try:
                backend.close()
            except Exception as e:  # a tracker that fails to close must not lose the run
                log.warning("closing a tracker failed: %s", e)
        self.backends = []
