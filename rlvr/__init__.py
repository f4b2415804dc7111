"""rlvr: reinforcement learning with verifiable rewards for reasoning language models."""

import os

# OpenMP threads wait for each other between ops by spinning (libgomp: 300,000 spins). On a
# CPU shared with another job that turns every 2-thread op into a 3-10x slowdown; sleeping at
# once (OMP_WAIT_POLICY=PASSIVE) costs 60% of decode speed on an idle CPU. 10,000 spins is as
# fast as the default when idle and keeps most of the loaded-case gain (benchmarks/README.md).
# Takes effect only when rlvr is imported before torch (the `rlvr` command is).
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
