"""Golden trajectories: 4 RL steps of the tiny model per configuration must reproduce the
numbers pinned in tests/golden/<cpu vendor>/<name>.json (see tests/golden/regenerate.py for
when to regenerate them, and why a recording per CPU vendor).

Why a tolerance and not equality for the metrics: on one machine the run is bit-exact
(float32 on CPU, one thread, every random draw from a named seed stream), and the weight
hashes check exactly that where torch's version and the CPU's vector capability match the
recording. Another CPU of the same vendor, or another torch build, may choose other matmul / reduction kernels that
round differently in the last bit (~1e-7 relative in float32); rtol 1e-5 absorbs that,
with 1e-6 absolute for quantities that are sums of O(1) terms cancelling to almost 0 (a
GRPO loss, the KL of step 1's first update), while any real change to the math or to the
order of random draws moves some metric by far more (a different sampled token changes
rewards, lengths and losses at O(1)). Caveat: on a machine whose rounding differs, a
last-bit difference can also flip a token drawn right at a CDF boundary; regenerate there
only after checking the pinned machine still reproduces the files.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"
_spec = importlib.util.spec_from_file_location("rlvr_golden_regenerate", GOLDEN_DIR / "regenerate.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)


@pytest.mark.parametrize("name", sorted(golden.CONFIGS))
def test_golden_trajectory(name, tmp_path):
    path = golden.golden_dir() / f"{name}.json"
    if not path.is_file():
        recorded = sorted(p.name for p in GOLDEN_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))
        pytest.skip(f"no golden recording for CPU vendor {golden.cpu_vendor()} (recorded: {recorded}); record "
                    "one with `python tests/golden/regenerate.py` where the recorded ones still pass")
    pinned = json.loads(path.read_text())
    fresh = golden.run_config(name, tmp_path)
    problems = golden.compare(pinned, fresh)
    assert not problems, "golden trajectory changed:\n  " + "\n  ".join(problems) + f"\n{golden.REGENERATE}"


def test_every_golden_file_has_a_configuration():
    files = list(GOLDEN_DIR.glob("*/*.json"))
    assert files and not list(GOLDEN_DIR.glob("*.json")), "golden files live in tests/golden/<cpu vendor>/"
    stale = sorted(p.stem for p in files if p.stem not in golden.CONFIGS)
    assert not stale, f"golden files without a configuration in regenerate.py: {stale}; delete them"


def test_compare_flags_a_moved_metric_and_hash():
    # The comparison itself: a change below the tolerance passes, one above it fails, and a
    # hash differs only counts where bit-exactness is expected.
    pinned = json.loads((GOLDEN_DIR / "AuthenticAMD" / "grpo.json").read_text())
    fresh = json.loads(json.dumps(pinned))
    fresh["steps"][1]["loss"] *= 1 + 1e-7
    assert golden.compare(pinned, fresh) == []
    fresh["steps"][2]["grad_norm"] *= 1.001
    fresh["final_weights_sha256"] = "0" * 64
    problems = golden.compare(pinned, fresh)
    assert len(problems) == 2 and "step 3: grad_norm" in problems[0] and "final_weights_sha256" in problems[1]
    fresh["recorded_with"] = {**fresh["recorded_with"], "torch": "0.0"}
    assert len(golden.compare(pinned, fresh)) == 1  # another torch: metrics checked, hashes not
