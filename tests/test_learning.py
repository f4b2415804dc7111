"""The product's promise, measured: the default recipe makes the model a better reasoner."""

from __future__ import annotations

import json

import pytest

from rlvr.cli import main


# Slow: the README's `rlvr train` block runs the same default recipe in CI and asserts its
# headline (warm start < 60%, a gain of >= 30 points: tests/test_readme.py).
@pytest.mark.slow
def test_default_recipe_raises_heldout_accuracy_by_20_points(tmp_path, capsys):
    run_dir = tmp_path / "default"
    assert main(["train", "--output-dir", str(run_dir), "logging.progress=false"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    warm, final = summary["warmstart_accuracy"], summary["final_accuracy"]
    print(f"warm start {warm:.3f} -> final {final:.3f} in {summary['wall_seconds']} s")
    # The sloppy teacher leaves headroom; RL with the verifier must close a large part of it.
    assert warm < 0.6
    assert final - warm >= 0.20
    assert summary["final_pass@1"] > summary["warmstart_pass@1"] + 0.15
    assert f"{100 * final:.1f}% (after RL)" in capsys.readouterr().out
