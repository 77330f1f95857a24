"""Subprocess entry for the training fault-injection tests: train the toy workload.

Usage: train_toy_run.py OUT SECTIONS_JSON SAVE_DELAY_SECONDS"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))

import torch  # noqa: E402
from toy_workload import make_config, toy_factories  # noqa: E402

from lmfusion_cli.training.loop import run_training  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    run_training(make_config(sys.argv[1], **json.loads(sys.argv[2])), *toy_factories(save_delay=float(sys.argv[3])))
