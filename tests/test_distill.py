"""The teacher term (KDRL, on-policy distillation): the coefficient schedule and the masking
against hand-computed values, k2 as the exact reverse-KL gradient on the policy's samples,
the learner's loss against a hand computation from the policy's and the teacher's log-probs,
on-policy distillation lowering the measured KL to a teacher, a teacher of another
vocabulary refused before any work, and an exact resume."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlvr.algorithms import KL_ESTIMATORS, annealed_coef, teacher_response_mask
from rlvr.cli import main
from rlvr.config import load_config
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks import Problem
from rlvr.training.batch import make_token_batch, token_logprobs
from rlvr.training.pipeline import new_run_dir, run_pipeline
from rlvr.training.rl import Learner
from rlvr.training.run_dir import RunDir

from crash_resume import crash_in_rl_step_then_resume, rl_records


def test_annealed_coef_is_linear_from_start_to_final():
    assert [annealed_coef(5e-3, 1e-3, t, 5) for t in range(5)] == pytest.approx([5e-3, 4e-3, 3e-3, 2e-3, 1e-3])
    assert annealed_coef(0.2, None, 7, 10) == 0.2
    assert annealed_coef(0.2, 0.0, 0, 1) == 0.2  # one step: the start value
    assert annealed_coef(0.2, 0.0, 12, 10) == 0.0  # past the end: the final value


def test_reward_guided_mask_covers_the_rejected_responses():
    correct = torch.tensor([True, False, False, True])
    assert teacher_response_mask(correct, "all").tolist() == [1.0, 1.0, 1.0, 1.0]
    assert teacher_response_mask(correct, "incorrect").tolist() == [0.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="'all' or 'incorrect'"):
        teacher_response_mask(correct, "correct")


def test_k2_as_loss_is_the_exact_reverse_kl_gradient_on_policy_and_k3_is_not():
    # One token over 5 outcomes: E_{x~p}[grad k(log p(x), log q(x))] against grad KL(p || q).
    torch.manual_seed(0)
    logits = torch.randn(5, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(5) * 2, -1)
    p = torch.softmax(logits, -1)
    exact = torch.autograd.grad((p * (torch.log_softmax(logits, -1) - teacher)).sum(), logits)[0]
    for name, matches in (("k2", True), ("k3", False)):
        expected = torch.zeros(5)
        for x in range(5):
            logp = torch.log_softmax(logits, -1)[x]
            grad = torch.autograd.grad(KL_ESTIMATORS.get(name)(logp, teacher[x]), logits)[0]
            expected += p[x].detach() * grad
        assert torch.allclose(expected, exact, atol=1e-6) == matches, name


def _trajectories() -> list[Trajectory]:
    rng = random.Random(0)
    out = []
    for row in range(8):
        response = [rng.randrange(4, 40) for _ in range(rng.randrange(2, 9))]
        out.append(Trajectory(problem=Problem(id=f"p{row // 4}", prompt="x", answer="1"), group=row // 4,
                              prompt_ids=[rng.randrange(4, 40) for _ in range(4)], response_ids=response,
                              logprobs=[-3.7 + rng.uniform(-0.3, 0.3) for _ in response], loss_mask=[1] * len(response),
                              finish_reason="stop", reward=float(row % 3 == 0), correct=row % 3 == 0))
    return out


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny model of the student's shape and tokenizer with other weights."""
    path = tmp_path_factory.mktemp("teacher")
    tokenizer = build_char_tokenizer()
    build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=7) \
        .save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("mask", ["all", "incorrect"])
def test_learner_loss_is_coef_times_k2_to_the_teacher(teacher_dir, mask):
    """Pure distillation (outcome false: every advantage 0, so the policy-gradient term is 0):
    the update's loss is coef * sum_t k2(log pi, log pi_T) * covered / sum of counted tokens,
    computed here by hand from the two models' log-probs before the update."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)
    teacher = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=7)
    config = load_config(None, ["rl.mini_batches=1", "rl.micro_batch_size=16", "rl.steps=3", "threads=1",
                                f"teacher.path={teacher_dir}", "teacher.coef=0.5", "teacher.coef_final=0.1",
                                "teacher.outcome=false", f"teacher.mask={mask}", "algorithm.loss_agg=token_mean"])
    learner = Learner.build(model, config, tokenizer.pad_token_id)
    trajectories = _trajectories()
    batch = make_token_batch([t.prompt_ids for t in trajectories], [t.response_ids for t in trajectories],
                             tokenizer.pad_token_id)
    with torch.no_grad():
        logp, teacher_logp = token_logprobs(model, batch)[0], token_logprobs(teacher, batch)[0]
    covered = torch.tensor([1.0 if mask == "all" or not t.correct else 0.0 for t in trajectories])[:, None]
    k2 = 0.5 * (logp - teacher_logp) ** 2 * batch.target_mask * covered
    coef = 0.3  # step 1 of 3, from 0.5 to 0.1
    expected = coef * float(k2.sum() / batch.target_mask.sum())

    prepared, stats = learner.prepare(trajectories, step=1)
    assert stats["teacher_coef"] == pytest.approx(coef)
    assert torch.equal(prepared.extras["advantages"], torch.zeros_like(prepared.extras["advantages"]))
    old = torch.tensor([x for t in trajectories for x in t.logprobs])
    assert stats["teacher_kl"] == pytest.approx(float((old - teacher_logp[batch.target_mask != 0]).mean()), rel=1e-5)
    update = learner.update(prepared, 1, trajectories)
    assert update["loss"] == pytest.approx(expected, rel=1e-5)
    assert expected > 0


TINY = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "sft.batch_size=8", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
        "rl.micro_batch_size=8", "rollout.max_new_tokens=12", "eval.problems=8", "eval.samples=2", "eval.every=0",
        "logging.progress=false", "threads=1"]


@pytest.fixture(scope="module")
def sft_teacher(tmp_path_factory):
    """A run directory whose SFT (60 steps) is the teacher of a student warm-started for 4."""
    root = tmp_path_factory.mktemp("sft_teacher")
    assert main(["sft", "--output-dir", str(root / "teacher"), *TINY, "sft.steps=60", "sft.lr=3e-3"]) == 0
    return root


def _teacher_kl(run) -> list[float]:
    return [r["teacher_kl"] for r in RunDir(run).read("metrics.jsonl") if r["stage"] == "rl"]


def test_on_policy_distillation_lowers_the_kl_to_the_teacher(sft_teacher):
    """The student samples; its only signal is the reverse KL to the teacher (outcome false).
    Over 12 steps the measured KL per token falls; with a negligible coefficient it does not."""
    runs = {}
    for name, coef in (("distilled", "1"), ("control", "1e-9")):
        run = sft_teacher / name
        assert main(["train", "--output-dir", str(run), *TINY, "sft.steps=4", "rl.steps=12", "rl.lr=3e-3",
                     "checkpoint.every=100", f"teacher.path={sft_teacher / 'teacher'}", f"teacher.coef={coef}",
                     "teacher.outcome=false"]) == 0
        runs[name] = _teacher_kl(run)
    start = runs["distilled"][0]
    assert runs["control"][0] == pytest.approx(start)  # step 1: the same student, samples and teacher
    assert sum(runs["distilled"][-3:]) / 3 < 0.7 * start, runs["distilled"]
    assert sum(runs["control"][-3:]) / 3 > 0.85 * start, runs["control"]


def test_a_teacher_with_another_vocabulary_is_refused_before_any_work(tmp_path, capsys):
    tokenizer = build_char_tokenizer()
    build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=7) \
        .save_pretrained(tmp_path / "other")
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(tmp_path / "other")
    capsys.readouterr()  # (the save's progress bar)
    code = main(["train", "--output-dir", str(tmp_path / "run"), *TINY, "sft.steps=2", "rl.steps=2",
                 f"teacher.path={tmp_path / 'other'}", "teacher.coef=0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "teacher.path:" in err and "tokenizer is not the student's" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    for bad, said in ((["teacher.coef=0.1"], "coef > 0 needs teacher.path"),
                      ([f"teacher.path={tmp_path / 'missing'}", "teacher.coef=0.1"], "teacher.path:"),
                      ([f"teacher.path={tmp_path / 'other'}"], "coef is 0"),
                      (["teacher.sft_steps=2", f"teacher.path={tmp_path / 'other'}", "teacher.coef=0.1"],
                       "teacher.path and teacher.sft_steps both set"),
                      (["teacher.rl_steps=2", "teacher.coef=0.1"], "rl_steps needs sft_steps")):
        code = main(["train", "--output-dir", str(tmp_path / "run"), *TINY, *bad])
        err = capsys.readouterr().err
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()


def test_kdrl_resumes_exactly_after_a_crash(sft_teacher, tmp_path, monkeypatch):
    config = load_config(None, [*TINY, "sft.steps=4", "rl.steps=4", "checkpoint.every=2",
                                f"teacher.path={sft_teacher / 'teacher'}", "teacher.coef=0.05",
                                "teacher.coef_final=0.01", "teacher.mask=incorrect"])
    straight = new_run_dir(config, str(tmp_path / "straight"), "t")
    run_pipeline(config, straight)
    crashed = crash_in_rl_step_then_resume(config, tmp_path / "crashed", monkeypatch)
    a, b = rl_records(straight.path), rl_records(crashed)
    assert a == b and [r["teacher_coef"] for r in a] == pytest.approx([0.05, 0.05 - 0.04 / 3, 0.05 - 0.08 / 3, 0.01])
    assert json.loads((straight.path / "summary.json").read_text())["final_accuracy"] == \
        json.loads((crashed / "summary.json").read_text())["final_accuracy"]


def test_a_teacher_the_run_trains_itself_is_a_run_dir_of_its_own_reused_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY, "sft.steps=4", "rl.steps=2", "checkpoint.every=2", "teacher.sft_steps=6", "teacher.rl_steps=2",
            "teacher.coef=0.1"]
    assert main(["train", "--output-dir", str(run), *args]) == 0
    out = capsys.readouterr().out
    assert "teacher: SFT for 6 steps, then RL for 2, in" in out and "teacher: held-out accuracy" in out
    teacher = RunDir(run / "teacher").read("metrics.jsonl")
    assert [r["step"] for r in teacher if r["stage"] == "sft"] == list(range(1, 7))
    assert [r["step"] for r in teacher if r["stage"] == "rl"] == [1, 2]
    assert all("teacher_kl" not in r for r in teacher)  # the teacher learns without a teacher
    student = [r for r in RunDir(run).read("metrics.jsonl") if r["stage"] == "rl"]
    assert all(r["teacher_kl"] > 0 for r in student)
    assert json.loads((run / "teacher" / "summary.json").read_text())["final_checkpoint"].endswith("checkpoints/final")
    assert main(["train", "--resume", str(run)]) == 0
    assert "teacher: SFT" not in capsys.readouterr().out
