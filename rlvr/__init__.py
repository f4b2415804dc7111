"""rlvr: reinforcement learning with verifiable rewards for reasoning language models."""

import os

# OpenMP threads wait for each other between ops by spinning (libgomp: 300,000 spins). On a
# CPU shared with another job that turns every 2-thread op into a 3-10x slowdown; sleeping at
# once (OMP_WAIT_POLICY=PASSIVE) costs 60% of decode speed on an idle CPU. 10,000 spins is as
# fast as the default when idle and keeps most of the loaded-case gain (benchmarks/README.md).
# Takes effect only when rlvr is imported before torch (the `rlvr` command is).
os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def _keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of returning it to the OS.

    Every RL step allocates and frees the same few-MB tensors (activations, KV caches);
    glibc serves blocks over 128 KB-32 MB with fresh mmap pages or trims its heap on free, so
    each step paid a page fault per 4 KB on first touch: 3% of the update, 7% of a rollout on
    the default model (benchmarks/README.md). Serving them from the heap and never trimming
    it keeps RSS at its peak instead. Skipped off glibc, or when the environment already sets
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ (RLVR_KEEP_FREED_MEMORY=0 turns it off).
    """
    import ctypes

    if os.environ.get("RLVR_KEEP_FREED_MEMORY", "1") == "0":
        return
    try:
        os.confstr("CS_GNU_LIBC_VERSION")  # raises off glibc
    except (ValueError, OSError, AttributeError):
        return
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's maximum
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


_keep_freed_memory()

__version__ = "0.1.0"


def train(*args, **kwargs):
    """Train as ``rlvr train`` does, from Python: see ``rlvr.api.train`` (imported on first
    use, so ``import rlvr`` stays light and keeps its thread settings ahead of torch)."""
    from rlvr.api import train as _train

    return _train(*args, **kwargs)


def __getattr__(name: str):
    if name in ("Callback", "TrainResult"):
        import rlvr.api

        return getattr(rlvr.api, name)
    raise AttributeError(f"module 'rlvr' has no attribute {name!r}")
