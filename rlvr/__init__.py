"""rlvr: reinforcement learning with verifiable rewards for reasoning language models."""

import os

# OpenMP threads that spin while waiting for each other turn a busy CPU (another job on the
# second core) into a 3-10x slowdown of every multi-threaded op; sleeping waiters cost little
# on an idle one. Takes effect only when rlvr is imported before torch (the `rlvr` command is).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
