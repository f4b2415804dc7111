"""Seeds derived from the run seed and a label, stable across processes and Python versions.

Each step draws its data and samples from a generator seeded by (run seed, stage, step), so a
resumed run replays exactly the stream an uninterrupted one would have seen.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed from ``seed`` and any labels (e.g. ``derive_seed(0, "rl-prompts", 12)``)."""
    text = ":".join([str(seed), *map(str, labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
