"""Every registered algorithm component runs a 2-step training through the CLI, and every
recipe in recipes/ loads and passes validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlvr.algorithms import (
    ADVANTAGES,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    adaptive_entropy_coef,
    adaptive_kl_coef,
)
from rlvr.cli import main
from rlvr.config import load_config
from rlvr.rewards.shaping import REWARD_SHAPERS
from rlvr.training.pipeline import check_names
from rlvr.training.run_dir import RunDir

RECIPES = sorted(Path(__file__).resolve().parent.parent.joinpath("recipes").glob("*.yaml"))


def _variants() -> list[tuple[str, list[str]]]:
    variants = [(f"advantage={name}", [f"algorithm.advantage={name}", "algorithm.pass_k=2"])
                for name in ADVANTAGES.names()]
    variants += [(f"loss={name}", [f"algorithm.loss={name}"]) for name in POLICY_LOSSES.names()]
    variants += [(f"loss_agg={name}", [f"algorithm.loss_agg={name}"]) for name in LOSS_AGGREGATIONS.names()]
    variants += [(f"kl={name}", [f"algorithm.kl.estimator={name}", "algorithm.kl.coef=0.05"])
                 for name in KL_ESTIMATORS.names()]
    variants += [
        ("kl-in-reward-adaptive", ["algorithm.kl.coef=0.05", "algorithm.kl.placement=reward",
                                   "algorithm.kl.estimator=k1", "algorithm.kl.target=0.01"]),
        # The entropy bonus moves the policy even when every tiny-model reward is 0.
        ("prorl-reset", ["algorithm.kl.coef=0.05", "algorithm.kl.reset_every=2", "rl.steps=3",
                         "algorithm.entropy.coef=0.1"]),
        ("prorl-reset-threshold", ["algorithm.kl.coef=0.05", "algorithm.kl.reset_threshold=1e-9", "rl.steps=3",
                                   "algorithm.entropy.coef=0.1"]),
        ("entropy-bonus-adaptive", ["algorithm.entropy.coef=0.01", "algorithm.entropy.target=0.5"]),
        ("top-entropy-tokens", ["algorithm.top_entropy_fraction=0.2"]),
        ("negative-sample-weighting", ["algorithm.positive_weight=0.1"]),
        ("dual-clip", ["algorithm.clip_c=3.0"]),
        ("truncated-is", ["algorithm.tis_cap=2.0"]),
        ("overlong-filtering", ["rl.mask_truncated=true"]),
        # a teacher the run trains itself (4 SFT steps), its term in the loss and in the token rewards
        ("teacher-kdrl", ["teacher.sft_steps=4", "teacher.coef=0.1", "teacher.coef_final=0.01",
                          "teacher.mask=incorrect"]),
        ("teacher-in-reward", ["teacher.sft_steps=4", "teacher.coef=0.1", "teacher.placement=reward",
                               "teacher.estimator=k1", "algorithm.advantage=reinforce_pp"]),
    ]
    shaping_params = {"overlong": "{buffer: 4}", "laser": "{target_length: 8}", "laser_d": "{interval: 4}",
                      "label_noise": "{p: 0.5}"}
    variants += [(f"shaping={name}", [f"reward.shaping=[{{name: {name}, params: {shaping_params.get(name, '{}')}}}]"])
                 for name in REWARD_SHAPERS.names()]
    return variants


@pytest.mark.parametrize("overrides", [v for _, v in _variants()], ids=[name for name, _ in _variants()])
def test_each_variant_trains_two_steps(tmp_path, tiny_overrides, overrides):
    run_dir = tmp_path / "run"
    args = ["train", "--output-dir", str(run_dir), *tiny_overrides, "rl.steps=2", "eval.samples=0", *overrides]
    assert main(args) == 0
    rl = [m for m in RunDir(run_dir).read("metrics.jsonl") if m["stage"] == "rl"]
    assert [m["step"] for m in rl] == list(range(1, len(rl) + 1)) and len(rl) >= 2
    for m in rl:
        for key in ("loss", "grad_norm", "entropy", "reward_mean"):
            assert math.isfinite(m[key]), (key, m)
    assert json.loads((run_dir / "summary.json").read_text())["final_checkpoint"]
    name = next(n for n, v in _variants() if v == overrides)
    if name in LOOP_CHECKS:
        LOOP_CHECKS[name](rl)


def _check_reset(rl):
    # Step 1 samples from the reference itself; by step 2 the policy has moved; the reset at
    # step 2 makes the reference the policy again, so step 3's rollout KL is zero again.
    assert [m["reference_reset"] for m in rl] == [0.0, 1.0, 0.0]
    assert rl[0]["kl_rollout"] == 0.0
    assert rl[1]["kl_rollout"] > 1e-7
    assert rl[2]["kl_rollout"] == 0.0


def _check_adaptive_kl(rl):
    n = 4 * 4  # prompts_per_step * samples_per_prompt in tiny_overrides
    assert rl[0]["kl_coef"] == pytest.approx(adaptive_kl_coef(0.05, rl[0]["kl_rollout"], 0.01, 10000, n))
    assert rl[1]["kl_coef"] == pytest.approx(adaptive_kl_coef(rl[0]["kl_coef"], rl[1]["kl_rollout"], 0.01, 10000, n))


def _check_adaptive_entropy(rl):
    assert rl[0]["entropy_coef"] == pytest.approx(adaptive_entropy_coef(0.01, rl[0]["entropy"], 0.5, 0.01))
    assert rl[0]["entropy_coef"] != 0.01


def _check_selection(rl):
    # ceil(0.2 * tokens) of the batch's response tokens are selected.
    assert all(0.2 <= m["selected_token_frac"] < 0.25 for m in rl)


def _check_tis(rl):
    # Our sampler's log-probs equal the trainer's, so untruncated weights are all ~1.
    assert all(m["tis_weight_mean"] == pytest.approx(1.0, abs=1e-4) for m in rl)


def _check_critic(rl):
    # explained_variance is NaN (and not logged) while every return is equal, as here.
    assert all(0.0 <= m["value_clip_frac"] <= 1.0 for m in rl)


def _check_random_reward(rl):
    # The tiny model is never right, so every reward comes from the Bernoulli(0.5) draw.
    assert all(m["reward/correctness"] == 0.0 for m in rl)
    assert all(0.0 < m["reward_mean"] < 1.0 for m in rl)
    assert all(m["reward/shaping"] == pytest.approx(m["reward_mean"]) for m in rl)


def _check_overlong(rl):
    # Truncated responses get the full -1 penalty, shorter ones inside the buffer part of it.
    assert all(m["reward/shaping"] <= -m["truncated_frac"] + 1e-6 for m in rl)
    assert any(m["truncated_frac"] > 0 for m in rl)


def _check_teacher(rl):
    # the teacher is another model: a KL to it on the rollout, the term counted on every step
    assert all(m["teacher_kl"] > 0 and m["teacher_covered_frac"] > 0 and m["time_teacher"] > 0 for m in rl)
    assert rl[0]["teacher_coef"] == 0.1


LOOP_CHECKS = {
    "teacher-kdrl": _check_teacher,
    "teacher-in-reward": _check_teacher,
    "prorl-reset-threshold": _check_reset,
    "shaping=random_reward": _check_random_reward,
    "shaping=overlong": _check_overlong,
    "prorl-reset": _check_reset,
    "kl-in-reward-adaptive": _check_adaptive_kl,
    "entropy-bonus-adaptive": _check_adaptive_entropy,
    "top-entropy-tokens": _check_selection,
    "truncated-is": _check_tis,
    "advantage=gae": _check_critic,
}


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_loads_and_validates(recipe):
    config = load_config(recipe)
    check_names(config, str(recipe))
    assert recipe.read_text().startswith("#"), "a recipe starts with a comment naming its paper"


def test_pass_at_k_with_kl_in_reward_is_refused(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "r"), "algorithm.advantage=pass_at_k",
                 "algorithm.kl.coef=0.1", "algorithm.kl.placement=reward"]) == 2
    assert "pass_at_k" in capsys.readouterr().err
