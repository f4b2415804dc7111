"""`rlvr eval` with several models: table, pass@k curve, results.json, test-time scaling,
cache reuse across calls, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr.cli import main
from rlvr.models import build_char_tokenizer, build_tiny_model

# the task of tests/test_eval_cache.py: a random model solves it about half the time
TASK = "test_eval_cache:EvenFirstChar"
FAST = ["eval.problems=6", "rollout.max_new_tokens=4", "eval.batch_size=16", "threads=1"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    tok = build_char_tokenizer()
    paths = []
    for name, seed in (("base", 1), ("tuned", 2)):
        model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                 max_position_embeddings=64, seed=seed)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths.append(str(root / name))
    return paths


def test_two_models_side_by_side(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", *checkpoints, "--task", TASK, "--n", "4", "--strategy", "best_of_n", "--selector",
            "mean_logprob", "--output-dir", str(out), *FAST]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "pass@k % (unbiased)" in printed.out and "| base" in printed.out and "tuned" in printed.out
    assert "test-time scaling (best_of_n, selector mean_logprob)" in printed.out
    assert "pass@k difference to base" in printed.out
    assert "generated 30 sequences" in printed.err  # 6 problems x (1 greedy + 4 sampled)
    results = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in results["models"]] == ["base", "tuned"]
    assert results["ks"] == [1, 2, 4]
    for model in results["models"]:
        m = model["metrics"]
        assert 0 <= m["pass@1"] <= m["pass@2"] <= m["pass@4"] <= 1
        assert m["scaling"]["k"] == [1, 2, 4] and len(m["scaling"]["ci95"]) == 3
        assert sum(p["correct"] for p in model["per_problem"]) == round(m["mean@n"] * 6 * 4)
    delta = results["deltas"]["tuned"]["pass@4"]
    assert delta == pytest.approx(results["models"][1]["metrics"]["pass@4"] - results["models"][0]["metrics"]["pass@4"])
    for name in ("table.md", "passk_curve.png", "scaling.png"):
        assert (out / name).stat().st_size > 100, name

    # A second call with more samples reuses the cache and only draws round [4, 8).
    assert main(["eval", checkpoints[0], "--task", TASK, "--n", "8", "--k", "1,8", "--json",
                 "--output-dir", str(out), *FAST]) == 0
    printed = capsys.readouterr()
    assert "generated 24 sequences, 30 reused" in printed.err
    (again,) = json.loads(printed.out)
    assert again["label"] == "base" and set(k for k in again if k.startswith("pass@") and "ci" not in k) == {
        "pass@1", "pass@8"}


def test_bad_arguments_fail_with_a_message(checkpoints, tmp_path, capsys):
    common = ["--task", TASK, "--output-dir", str(tmp_path), *FAST]
    assert main(["eval", checkpoints[0], "--n", "4", "--k", "8", *common]) == 2
    assert "k=8" in capsys.readouterr().err
    assert main(["eval", checkpoints[0], "--n", "4", "--strategy", "best_of_n", "--selector", "nope", *common]) == 2
    assert "unknown selector 'nope'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), *common]) == 2
    assert "neither a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["", "{\"completed_st", "[1, 2]", "\xff\xfe"])
def test_a_run_dir_with_a_damaged_state_is_a_one_line_error(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_bytes(content.encode("latin-1"))
    assert main(["eval", str(run), "--task", TASK, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "state.json is damaged" in err[0] and f"rlvr train --resume {run}" in err[0], err
