"""NaN and inf never reach the optimizer or a checkpoint: non-finite rewards are errors that
name the function and the sample (or zeros that are counted), non-finite losses, gradients
and update inputs skip the update and stop the run after N in a row, non-finite weights are
neither saved nor loaded, and a verifier that always hangs is reported, then stopped."""

from __future__ import annotations

import copy
import math
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlvr.algorithms import POLICY_LOSSES
from rlvr.cli import main
from rlvr.config import load_config
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.models.loading import load_model_and_tokenizer
from rlvr.rewards import RewardError, compose_reward
from rlvr.rewards.shaping import ShapingInputs, apply_shapers
from rlvr.rollout.trajectory import Trajectory
from rlvr.tasks.addition import AdditionTask
from rlvr.tasks.base import Problem
from rlvr.training import sft as sft_module
from rlvr.training.batch import make_token_batch, token_logprobs
from rlvr.finite import NonFiniteError
from rlvr.training.judge import score_trajectories, shape_rewards
from rlvr.training.rl import Learner, policy_update, step_metrics
from rlvr.training.run_dir import TRAINER_STATE, RunDir, load_trainer_state
from rlvr.training.sft import train_sft
from rlvr.verify import InlineVerifier, VerifierPool, VerifierTimeoutError

pytestmark = pytest.mark.timeout(120)

REWARDS_MODULE = textwrap.dedent('''
    def flaky(task, problem, completion, score):
        """NaN for completions of odd length: a user's reward with a hole in it."""
        return float("nan") if len(completion) % 2 else 1.0

    def inf(task, problem, completion, score):
        return float("inf")

    def text(task, problem, completion, score):
        return "1.0"

    def boom(task, problem, completion, score):
        raise ZeroDivisionError("division by zero")
''')


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    (tmp_path / "user_rewards.py").write_text(REWARDS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))


TOKENIZER = build_char_tokenizer()


def _trajectory(problem: Problem, text: str, group: int = 0) -> Trajectory:
    """A sampled response whose tokens decode to ``text``."""
    ids = TOKENIZER(text, add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id]
    return Trajectory(problem=problem, group=group, prompt_ids=[8, 79, 9], response_ids=ids, logprobs=[-1.0] * len(ids),
                      loss_mask=[1] * len(ids), finish_reason="eos", text=text)


# ----------------------------------------------------------------------------- rewards


@pytest.mark.parametrize("fn, says", [("flaky", "returned nan"), ("inf", "returned inf"),
                                      ("text", "returned '1.0', not a number"),
                                      ("boom", "raised ZeroDivisionError: division by zero")])
def test_a_failing_reward_names_the_function_and_the_sample(user_rewards, fn, says):
    task, tokenizer = AdditionTask(AdditionTask.Params()), TOKENIZER
    config = load_config(None, [f"reward.components={{correctness: 1.0, 'user_rewards:{fn}': 0.5}}"])
    problems = [Problem(id="p-even", prompt="1+2", answer="3"), Problem(id="p-odd", prompt="1+1", answer="2")]
    trajectories = [_trajectory(problems[0], "=> 3"), _trajectory(problems[1], "=> 12")]
    with pytest.raises(RewardError) as err:
        score_trajectories(trajectories, task, InlineVerifier(task), tokenizer, config)
    message = str(err.value)
    assert f"'user_rewards:{fn}'" in message and says in message and "reward.on_error" in message
    sample = "problem 'p-odd' (answer '=> 12')" if fn == "flaky" else "problem 'p-even' (answer '=> 3')"
    assert sample in message


def test_on_error_zero_scores_the_failed_component_zero_and_counts_it(user_rewards):
    task, tokenizer = AdditionTask(AdditionTask.Params()), TOKENIZER
    config = load_config(None, ["reward.components={correctness: 1.0, 'user_rewards:flaky': 0.5}",
                                "reward.on_error=zero"])
    problem = Problem(id="p", prompt="1+2", answer="3")
    trajectories = [_trajectory(problem, "=> 3"), _trajectory(problem, "=> 33"), _trajectory(problem, "=> 4")]
    score_trajectories(trajectories, task, InlineVerifier(task), tokenizer, config)
    # "=> 3" (even): 1 + 0.5; "=> 33" (odd, NaN -> 0): 0 + 0; "=> 4" (even, wrong): 0 + 0.5.
    assert [t.reward for t in trajectories] == [1.5, 0.0, 0.5]
    assert trajectories[1].reward_components == {"correctness": 0.0, "user_rewards:flaky": 0.0, "failed": 1.0}
    assert "'user_rewards:flaky' returned nan" in trajectories[1].error
    assert trajectories[0].error is None and "failed" not in trajectories[0].reward_components
    record = step_metrics(1, trajectories, config)
    assert record["reward/failed"] == 1.0 and math.isfinite(record["reward_mean"])


def test_a_non_finite_environment_reward_names_the_environment_component():
    task = AdditionTask(AdditionTask.Params())
    problem = Problem(id="ep-1", prompt="1+2", answer="3")
    episode = _trajectory(problem, "=> 3")
    episode.env_reward = float("-inf")  # e.g. an environment's penalty that divided by zero
    with pytest.raises(RewardError, match=r"reward component 'environment' returned -inf for problem 'ep-1'"):
        compose_reward({"correctness": 1.0, "environment": 1.0}, task, problem, "=> 3",
                       task.score(problem, "=> 3"), episode=episode)


def test_finite_components_whose_weighted_sum_overflows_are_a_reward_error():
    task = AdditionTask(AdditionTask.Params())
    problem = Problem(id="big", prompt="1+2", answer="3")
    score = task.score(problem, "=> 3")  # correct: correctness 1.0, format 1.0
    assert compose_reward({"correctness": 1e308, "format": 1.0}, task, problem, "=> 3", score)[0] == 1e308 + 1.0
    with pytest.raises(RewardError, match=r"weighted sum of the reward components is inf for problem 'big'"):
        compose_reward({"correctness": 1e308, "format": 1e308}, task, problem, "=> 3", score)


def test_a_reward_params_mistake_is_still_a_type_error_not_a_zero():
    task = AdditionTask(AdditionTask.Params())
    problem = Problem(id="p", prompt="1+2", answer="3")
    with pytest.raises(TypeError, match="reward.params.regex_format"):
        compose_reward({"regex_format": 1.0}, task, problem, "=> 3", task.score(problem, "=> 3"), on_error="zero")


def _nan_for_second(inputs: ShapingInputs) -> torch.Tensor:
    return torch.where(torch.arange(len(inputs.rewards)) == 1, float("nan"), inputs.rewards)


def test_a_non_finite_shaper_output_names_the_shaper_and_the_sample():
    config = load_config(None, [])
    problem = Problem(id="q-7", prompt="1+2", answer="3")
    trajectories = [_trajectory(problem, "=> 3"), _trajectory(problem, "=> 4 long answer")]
    for t in trajectories:
        t.reward, t.reward_components = 1.0, {"correctness": 1.0}
    with pytest.raises(RewardError, match=r"shaper _nan_for_second returned nan for sample 1 .*"
                                          r"problem 'q-7' \(answer '=> 4 long answer'\)"):
        shape_rewards(trajectories, [(_nan_for_second, {})], config, step=0)
    inputs = ShapingInputs(rewards=torch.ones(2), correct=torch.ones(2, dtype=torch.bool),
                           lengths=torch.ones(2, dtype=torch.long), truncated=torch.zeros(2, dtype=torch.bool),
                           group_ids=torch.zeros(2, dtype=torch.long), max_new_tokens=4,
                           generator=torch.Generator())
    with pytest.raises(RewardError) as err:
        apply_shapers(inputs, [(_nan_for_second, {})])
    assert err.value.sample == 1


def test_on_error_zero_run_continues_and_counts_failed_samples(tmp_path, tiny_overrides, user_rewards):
    run_dir = tmp_path / "run"
    args = ["train", "--output-dir", str(run_dir), *tiny_overrides, "sft.steps=2", "rl.steps=2",
            "eval.problems=2", "eval.samples=0", "logging.samples_per_step=16",
            "reward.components={correctness: 1.0, 'user_rewards:flaky': 0.5}", "reward.on_error=zero"]
    assert main(args) == 0
    run = RunDir(run_dir)
    records = [r for r in run.read("metrics.jsonl") if r["stage"] == "rl"]
    samples = [s for s in run.read("samples.jsonl") if s["stage"] == "rl"]
    assert len(records) == 2 and len(samples) == 32  # every sample of both steps is logged
    for record in records:
        mine = [s for s in samples if s["step"] == record["step"]]
        expected = sum(len(s["completion"]) % 2 == 1 for s in mine)
        assert record["reward/failed"] == expected > 0
        assert all(("failed" in s["reward_components"]) == (len(s["completion"]) % 2 == 1) for s in mine)
    final, _ = load_model_and_tokenizer(run_dir / "checkpoints" / "final")
    assert all(torch.isfinite(p).all() for p in final.parameters())


# ----------------------------------------------------------------------------- updates


def _rl_setup(overrides=()):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=3)
    config = load_config(None, ["rl.samples_per_prompt=2", "rl.prompts_per_step=2", "rl.mini_batches=1",
                                "rl.lr=0.01", *overrides])
    problem = Problem(id="p", prompt="1+2", answer="3")
    trajectories = [Trajectory(problem=problem, group=row // 2, prompt_ids=[8, 79, 9], response_ids=response,
                               logprobs=[-2.0] * len(response), loss_mask=[1] * len(response), finish_reason="eos",
                               entropies=[1.0] * len(response), text="x" * len(response),
                               reward=float(row in (0, 3)))
                    for row, response in enumerate([[10, 2], [11, 12, 2], [13], [10, 11, 12, 13]])]
    return model, tokenizer, config, trajectories


def _snapshot(model, learners):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(learners.optimizer.state_dict())


def _assert_identical(before, model, learners):
    weights, optim = before
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    now = learners.optimizer.state_dict()
    assert now["state"].keys() == optim["state"].keys()
    for key, state in now["state"].items():
        for name, value in state.items():
            assert torch.equal(value, optim["state"][key][name]), (key, name)


def test_non_finite_loss_skips_the_update_and_stops_after_n_in_a_row(monkeypatch):
    ppo = POLICY_LOSSES.get("ppo")
    poisoned = {"on": False}

    def sometimes_inf(logp, old, adv, mask, **kw):
        per_token, stats = ppo(logp, old, adv, mask, **kw)
        return (per_token * float("inf") if poisoned["on"] else per_token), stats

    monkeypatch.setitem(POLICY_LOSSES._entries, "sometimes_inf", sometimes_inf)
    model, tokenizer, config, trajectories = _rl_setup(["algorithm.loss=sometimes_inf", "rl.max_nonfinite_updates=3"])
    learners = Learner.build(model, config, tokenizer.pad_token_id)
    batch, _ = learners.prepare(trajectories)

    def update(step):
        return policy_update(learners, batch, torch.Generator().manual_seed(0), step)

    assert update(0)["skipped_updates"] == 0.0  # a finite update first, so Adam has moments to keep
    poisoned["on"] = True
    for step in (1, 2):
        before = _snapshot(model, learners)
        metrics = update(step)
        assert metrics["skipped_updates"] == 1.0
        _assert_identical(before, model, learners)  # weights and Adam state bit-identical
        assert all(p.grad is None for p in model.parameters())
    poisoned["on"] = False
    assert update(3)["skipped_updates"] == 0.0  # a good update resets the count
    poisoned["on"] = True
    update(4), update(5)
    with pytest.raises(NonFiniteError, match=r"RL step 7 .*3 optimizer updates in a row .*loss is (inf|nan)"
                                             r".*rl.max_nonfinite_updates = 3"):
        update(6)


def test_a_non_finite_gradient_names_its_parameter(monkeypatch):
    model, tokenizer, config, trajectories = _rl_setup(["rl.max_nonfinite_updates=1"])
    learners = Learner.build(model, config, tokenizer.pad_token_id)
    batch, _ = learners.prepare(trajectories)
    before = _snapshot(model, learners)
    weight = model.model.layers[0].mlp.up_proj.weight
    weight.register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(NonFiniteError, match=r"policy gradient norm is nan \(first non-finite gradient: "
                                             r"model.layers.0.mlp.up_proj.weight\)"):
        policy_update(learners, batch, torch.Generator().manual_seed(0), 0)
    _assert_identical(before, model, learners)


def test_non_finite_log_probs_skip_the_step_before_any_update(capsys):
    model, tokenizer, config, trajectories = _rl_setup()
    trajectories[2].logprobs = [float("-inf")]  # e.g. a sampler that produced an impossible token
    learners = Learner.build(model, config, tokenizer.pad_token_id)
    before = _snapshot(model, learners)
    batch, _ = learners.prepare(trajectories)
    record = learners.update(batch, 0, trajectories)
    assert record["skipped_updates"] == 1.0 and "loss" not in record
    _assert_identical(before, model, learners)
    assert "non-finite old log-probs for problem 'p'" in capsys.readouterr().err


def test_sft_skips_non_finite_steps_and_stops(tmp_path, tiny_overrides, monkeypatch):
    config = load_config(None, [*tiny_overrides, "sft.steps=6", "sft.max_nonfinite_updates=3"])
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    initial = copy.deepcopy(model.state_dict())
    real = token_logprobs
    monkeypatch.setattr(sft_module, "token_logprobs", lambda m, b: (real(m, b)[0] * float("nan"), None))
    run = RunDir.create(config, tmp_path / "run")
    with pytest.raises(NonFiniteError, match=r"SFT step 3: 3 optimizer updates in a row .*loss is nan"):
        train_sft(model, tokenizer, AdditionTask(AdditionTask.Params()), config, run, run.load_state(), frozenset())
    assert [r["skipped_updates"] for r in run.read("metrics.jsonl")] == [1.0, 1.0]
    assert all(torch.equal(t, initial[k]) for k, t in model.state_dict().items())
    assert not (run.checkpoints / "sft-final").exists()  # a stopped stage leaves no result


# ----------------------------------------------------------------------------- weights


def test_save_model_refuses_non_finite_weights(tmp_path):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    with torch.no_grad():
        model.model.norm.weight[3] = float("nan")
    run = RunDir(tmp_path)
    with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint 'final': tensor model.norm.weight "
                                             r"holds non-finite values \(1 nan, 0 inf of 32 values\)"):
        run.save_model("final", model, tokenizer)
    assert not (tmp_path / "checkpoints").exists()


def test_loading_a_checkpoint_with_a_nan_weight_names_the_file_and_tensor(tmp_path):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.weight"][0, 0] = float("inf")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NonFiniteError, match=rf"checkpoint {tmp_path}: tensor model.layers.0.self_attn.k_proj.weight "
                                             r"in model.safetensors holds non-finite values \(0 nan, 1 inf"):
        load_model_and_tokenizer(tmp_path)


def test_resuming_from_a_trainer_state_with_nan_moments_is_an_error(tmp_path):
    model, tokenizer, config, trajectories = _rl_setup()
    learners = Learner.build(model, config, tokenizer.pad_token_id)
    batch, _ = learners.prepare(trajectories)
    policy_update(learners, batch, torch.Generator().manual_seed(0), 0)
    state = {"learners": learners.state_dict(), "step": 1}
    state["learners"]["optimizer"]["state"][2]["exp_avg"].view(-1)[5] = float("nan")
    torch.save(state, tmp_path / TRAINER_STATE)
    with pytest.raises(NonFiniteError, match=rf"checkpoint {tmp_path}: trainer_state.pt: "
                                             r"tensor learners.optimizer.state.2.exp_avg holds non-finite"):
        load_trainer_state(tmp_path)


# ----------------------------------------------------------------------------- verifier


SLEEPY_TASK = textwrap.dedent('''
    import random, time
    from rlvr.tasks.base import Problem, Score, Task

    class SleepyTask(Task):
        """Scores completion == answer; a completion of "hang" sleeps far past any timeout. Its
        own small module, so a spawned verifier worker starts fast."""

        name = "sleepy"

        def generate(self, rng: random.Random) -> Problem:
            return Problem(id="7", prompt="7", answer="7")

        def extract_answer(self, completion):
            return completion

        def score(self, problem, completion):
            if completion == "hang":
                time.sleep(100)
            return Score(reward=float(completion == problem.answer), correct=completion == problem.answer)
''')


def test_a_hanging_verifier_warns_is_measured_and_stops_the_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "sleepy_task.py").write_text(SLEEPY_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    from sleepy_task import SleepyTask

    task, tokenizer = SleepyTask(), TOKENIZER
    config = load_config(None, [])
    problem = Problem(id="7", prompt="7", answer="7")
    with VerifierPool(task, workers=1, timeout_s=0.2, max_timeout_batches=2) as pool:
        # An RL step whose batch half timed out: the metric says so, and a warning (once) says what to change.
        trajectories = [_trajectory(problem, "7"), _trajectory(problem, "hang")]
        score_trajectories(trajectories, task, pool, tokenizer, config)
        assert step_metrics(1, trajectories, config)["verifier_timeout_frac"] == 0.5
        warning = capsys.readouterr().err
        assert "1 of 2 verifications in a batch timed out after 0.2 s" in warning
        assert "verifier.timeout_s" in warning and "verifier.workers" in warning
        pool.score_many([problem], ["hang"])  # one batch entirely timed out: not yet two in a row
        assert capsys.readouterr().err == ""
        with pytest.raises(VerifierTimeoutError, match=r"every verification of the last 2 batches timed out "
                                                       r".*verifier.max_timeout_batches = 2.*verifier.timeout_s"):
            pool.score_many([problem], ["hang"])


def test_a_norm_that_overflows_from_finite_gradients_is_named_as_such(capsys):
    from rlvr.training.finite import UpdateGuard, clip_grad_norm

    layer = torch.nn.Linear(4, 4)
    for p in layer.parameters():
        p.grad = torch.full_like(p, 1e30)  # each finite; the sum of squares overflows float32
    norm = clip_grad_norm(layer, 1.0)
    assert norm == float("inf")
    assert all(torch.equal(p.grad, torch.full_like(p, 1e30)) for p in layer.parameters())  # not clipped to NaN
    guard = UpdateGuard("RL", "rl", 3)
    assert not guard.allow("step 1", 0.5, [("policy", layer, norm)])
    err = capsys.readouterr().err
    assert "policy gradient norm is inf (every gradient is finite, the norm overflowed: largest |gradient| 1e+30)" in err


def test_log_records_are_strict_json_with_null_for_non_finite_values(tmp_path):
    # a skipped update's loss is NaN; json.dumps used to write the bare token NaN, which
    # strict JSON readers (jq, JavaScript, most dashboards) refuse
    run = RunDir(tmp_path)
    run.append("metrics.jsonl", [{"step": 1, "loss": float("nan"), "skipped_updates": 1.0,
                                  "by": {"policy": float("-inf"), "list": [float("inf"), 2.5]}},
                                 {"step": 2, "loss": 0.25}])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == '{"step": 1, "loss": null, "skipped_updates": 1.0, "by": {"policy": null, "list": [null, 2.5]}}'
    assert lines[1] == '{"step": 2, "loss": 0.25}'
