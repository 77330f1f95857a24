"""Make the toy workload importable as `toy_workload` (also from torchrun child scripts)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
