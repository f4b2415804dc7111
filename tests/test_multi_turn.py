"""The multi-turn rollout loop: token-in-token-out, loss masks, sandbox per trajectory,
feedback turns, void turns, tool policies, and that observations get no gradient."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlvr.algorithms import POLICY_LOSSES, aggregate_loss
from rlvr.config import EnvironmentConfig, RunConfig
from rlvr.models import build_char_tokenizer, build_tiny_model
from rlvr.rewards import compose_reward
from rlvr.rewards.otc import otc_shaping, otc_tool_reward
from rlvr.rewards.shaping import ShapingInputs, void_turn_filter_mask
from rlvr.rollout.engine import Generation, RolloutEngine
from rlvr.rollout.environment import build_environment
from rlvr.rollout.multi_turn import chat_turn_text
from rlvr.rollout.sampling import sample_trajectories
from rlvr.tasks import TASKS
from rlvr.training.batch import make_token_batch, token_logprobs
from rlvr.training.judge import score_trajectories
from rlvr.training.rl import episode_metrics
from rlvr.training.run_dir import RunDir
from rlvr.training.sft import sft_batch
from rlvr.verify.pool import InlineVerifier


class ScriptedEngine(RolloutEngine):
    """Plays back fixed token ids, one scripted turn per call for each episode (identified by
    its prompt, which must be distinct per row), with the engine's stop/EOS semantics."""

    def __init__(self, scripts: dict[tuple[int, ...], list[list[int]]]):
        self.scripts = scripts
        self.calls: dict[tuple[int, ...], int] = {}
        self.contexts: list[list[int]] = []

    def generate(self, model, prompts, *, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id,
                 generator=None, stop_sequences=()):
        out = []
        for context in prompts:
            self.contexts.append(list(context))
            key = next(k for k in self.scripts if tuple(context[:len(k)]) == k)
            turn = self.scripts[key][self.calls.get(key, 0)][:max_new_tokens]
            self.calls[key] = self.calls.get(key, 0) + 1
            if turn and turn[-1] == eos_token_id:
                reason = "eos"
            elif any(turn[-len(s):] == list(s) for s in stop_sequences if len(s) <= len(turn)):
                reason = "stop"
            else:
                reason = "length"
            out.append(Generation(turn, [-0.5] * len(turn), reason, [1.0] * len(turn)))
        return out


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in code, whose merges make re-tokenization differ
    from a character-by-character generation."""
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<|end|>", "<unk>", "<|user|>",
                                                                  "<|assistant|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [f"<code>print({a}*{b})</code><output>{a * b}\n</output>=> {a * b}"
              for a in range(10, 60) for b in range(10, 30)]
    tk.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|end|>", unk_token="<unk>")
    hf.chat_template = build_char_tokenizer().chat_template
    return hf


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _char_ids(tok, text: str) -> list[int]:
    """``text`` spelled one character per token (a valid, non-canonical tokenization)."""
    return [i for ch in text for i in _ids(tok, ch)]


def _setup(tok, env_config: EnvironmentConfig, task_name="multiplication"):
    task = TASKS.get(task_name)()
    verifier = InlineVerifier(task)
    return task, verifier, build_environment(env_config, task, verifier.score_many)


def _prompt(tok, problem) -> tuple[int, ...]:
    from rlvr.rollout.trajectory import render_prompt
    return tuple(render_prompt(tok, problem))


@pytest.fixture(scope="module")
def tiny():
    tok = build_char_tokenizer()
    return tok, build_tiny_model(tok, max_position_embeddings=256, seed=0)


def test_token_in_token_out_keeps_sampled_ids_and_tokenizes_observations_alone():
    tok = bpe_tokenizer()
    task, verifier, factory = _setup(tok, EnvironmentConfig(name="python", max_turns=3))
    problem = task.sample_problems(1, 0)[0]
    a, b = problem.metadata["a"], problem.metadata["b"]
    # The policy spells "print(" one character at a time (BPE would merge it), then closes.
    turn1 = _ids(tok, "<code>") + _char_ids(tok, f"print({a}*{b})") + _ids(tok, "</code>")
    turn2 = _char_ids(tok, f"=> {a * b}") + [tok.eos_token_id]
    engine = ScriptedEngine({_prompt(tok, problem): [turn1, turn2]})
    model = torch.nn.Linear(1, 1)
    [traj] = sample_trajectories(engine, model, tok, [problem], max_new_tokens=200, temperature=1.0,
                                 environment=factory)
    observation = f"<output>{a * b}\n</output>"
    assert traj.response_ids == turn1 + _ids(tok, observation) + turn2
    assert traj.loss_mask == [1] * len(turn1) + [0] * len(_ids(tok, observation)) + [1] * len(turn2)
    policy_ids = [i for i, m in zip(traj.response_ids, traj.loss_mask) if m]
    assert policy_ids == turn1 + turn2  # exactly what was sampled
    assert traj.logprobs == [-0.5] * len(turn1) + [0.0] * len(_ids(tok, observation)) + [-0.5] * len(turn2)
    # The second call's context is the prompt plus the ids as sampled/observed, not a re-encoding.
    assert engine.contexts[1] == list(_prompt(tok, problem)) + turn1 + _ids(tok, observation)
    # Rendering the same transcript as text and re-tokenizing it gives other tokens: the
    # hazard this loop avoids is real for this tokenizer.
    retokenized = _ids(tok, tok.decode(traj.response_ids, skip_special_tokens=False))
    assert retokenized != traj.response_ids
    assert (traj.turns, traj.tool_calls, traj.tool_errors, traj.finish_reason) == (2, 1, 0, "eos")
    assert traj.answer_text == tok.decode(turn1, skip_special_tokens=True) + tok.decode(turn2, skip_special_tokens=True)
    score_trajectories([traj], task, verifier, tok, RunConfig())
    assert traj.correct and traj.reward == 1.0


def test_stop_string_spelled_with_other_tokens_still_pauses_the_turn():
    tok = bpe_tokenizer()
    task, _, factory = _setup(tok, EnvironmentConfig(name="python", max_turns=2))
    problem = task.sample_problems(1, 1)[0]
    extra = _char_ids(tok, "junk")
    turn1 = _char_ids(tok, "<code>print(7)</code>") + extra  # the engine's token match cannot see this close
    engine = ScriptedEngine({_prompt(tok, problem): [turn1, [tok.eos_token_id]]})
    [traj] = sample_trajectories(engine, torch.nn.Linear(1, 1), tok, [problem], max_new_tokens=200,
                                 temperature=1.0, environment=factory)
    assert traj.tool_calls == 1
    kept = _char_ids(tok, "<code>print(7)</code>")
    assert traj.response_ids[:len(kept)] == kept
    assert traj.segments[1]["text"] == "<output>7\n</output>"


def test_sessions_persist_within_and_are_limited_per_trajectory():
    tok = build_char_tokenizer()
    task, _, factory = _setup(tok, EnvironmentConfig(name="python", max_turns=3,
                                                     params={"wall_time_s": 1.0, "cpu_time_s": 1.0}))
    p1, p2, p3 = task.sample_problems(3, 2)
    scripts = {
        _prompt(tok, p1): [_ids(tok, "<code>x = 41</code>"), _ids(tok, "<code>print(x + 1)</code>"),
                           [tok.eos_token_id]],
        _prompt(tok, p2): [_ids(tok, "<code>while True: pass</code>"), _ids(tok, "<code>print(x)</code>"),
                           [tok.eos_token_id]],
        _prompt(tok, p3): [_ids(tok, "<code>print(x)</code>"), [tok.eos_token_id]],
    }
    trajs = sample_trajectories(ScriptedEngine(scripts), torch.nn.Linear(1, 1), tok, [p1, p2, p3],
                                max_new_tokens=250, temperature=1.0, environment=factory)
    outputs = [[s["text"] for s in t.segments if s["role"] == "observation"] for t in trajs]
    assert outputs[0] == ["<output></output>", "<output>42\n</output>"]  # state persists across calls
    assert trajs[0].tool_errors == 0
    assert "timeout" in outputs[1][0] or "time" in outputs[1][0].lower()
    assert trajs[1].tool_errors == 2  # the timed-out interpreter restarts empty: x is gone
    assert "NameError" in outputs[1][1]
    assert "NameError" in outputs[2][0]  # another trajectory never sees x = 41
    metrics = episode_metrics(trajs)
    assert metrics["tool_calls"] == pytest.approx(5 / 3)
    assert metrics["tool_error_rate"] == pytest.approx(3 / 5)


def test_try_again_feedback_turns_and_per_turn_reward():
    tok = build_char_tokenizer()
    task, verifier, factory = _setup(tok, EnvironmentConfig(name="try_again", max_turns=3,
                                                            params={"decay": 0.5, "repetition_penalty": 0.1}),
                                     task_name="addition")
    p1, p2 = task.sample_problems(2, 3)
    wrong1, wrong2 = int(p1.answer) + 1, int(p2.answer) + 1
    scripts = {
        # wrong, the same wrong answer again (penalised), then right: 0.5**2 - 0.1
        _prompt(tok, p1): [_ids(tok, f"=> {wrong1}") + [tok.eos_token_id]] * 2
        + [_ids(tok, f"=> {p1.answer}") + [tok.eos_token_id]],
        # wrong three times with different answers: no success, no penalty
        _prompt(tok, p2): [_ids(tok, f"=> {wrong2 + i}") + [tok.eos_token_id] for i in range(3)],
    }
    engine = ScriptedEngine(scripts)
    t1, t2 = sample_trajectories(engine, torch.nn.Linear(1, 1), tok, [p1, p2], max_new_tokens=120,
                                 temperature=1.0, environment=factory)
    feedback = _ids(tok, "<|user|>Try again.<|assistant|>")
    assert chat_turn_text(tok, "Try again.") == "<|user|>Try again.<|assistant|>"
    first = _ids(tok, f"=> {wrong1}") + [tok.eos_token_id]
    assert t1.response_ids[:len(first) + len(feedback)] == first + feedback
    assert t1.loss_mask[len(first):len(first) + len(feedback)] == [0] * len(feedback)
    assert (t1.turns, t2.turns) == (3, 3)
    assert t1.env_reward == pytest.approx(0.5**2 - 0.1)
    assert t2.env_reward == 0.0
    config = RunConfig()
    config.reward.components = {"environment": 1.0}
    score_trajectories([t1, t2], task, verifier, tok, config)
    assert (t1.correct, t2.correct) == (True, False)  # the final attempt is judged
    assert (t1.reward, t2.reward) == (pytest.approx(0.15), 0.0)


def test_void_turns_required_and_forbidden_tools():
    tok = build_char_tokenizer()
    task, verifier, forbidden = _setup(tok, EnvironmentConfig(name="python", params={"tools": "forbidden"}))
    p1, p2 = task.sample_problems(2, 4)
    a, b = p1.metadata["a"], p1.metadata["b"]
    call = _ids(tok, f"<code>print({a}*{b})</code>")
    answer = _ids(tok, f"=> {a * b}") + [tok.eos_token_id]
    scripts = {_prompt(tok, p1): [call, answer], _prompt(tok, p2): [_ids(tok, "hmm") + [tok.eos_token_id]]}
    t1, t2 = sample_trajectories(ScriptedEngine(scripts), torch.nn.Linear(1, 1), tok, [p1, p2],
                                 max_new_tokens=120, temperature=1.0, environment=forbidden)
    assert t1.violation is not None and t1.turns == 1 and t1.tool_calls == 1
    assert t2.void_turns == 1 and t2.violation is None
    _, _, required = _setup(tok, EnvironmentConfig(name="python", params={"tools": "required"}))
    scripts = {_prompt(tok, p1): [answer], _prompt(tok, p2): [call, answer]}
    t3, t4 = sample_trajectories(ScriptedEngine(scripts), torch.nn.Linear(1, 1), tok, [p1, p2],
                                 max_new_tokens=120, temperature=1.0, environment=required)
    score_trajectories([t3, t4], task, verifier, tok, RunConfig())
    assert t3.correct and t3.violation is not None and t3.reward == 0.0  # right, but skipped the tool
    assert t4.violation is None
    assert void_turn_filter_mask(torch.tensor([0, 2, 1, 0])).tolist() == [1.0, 0.0, 0.0, 1.0]


def test_otc_tool_reward_matches_the_formula():
    assert otc_tool_reward(0, None, 1.0) == 1.0
    assert otc_tool_reward(1, 0, 1.0) == pytest.approx(0.5)            # cos(pi/3)
    assert otc_tool_reward(1, 1, 1.0) == pytest.approx(1.0)            # sin(pi/2)
    assert otc_tool_reward(2, 1, 1.0) == pytest.approx(3**0.5 / 2)     # f = 4/3: sin(2pi/3)
    assert otc_tool_reward(3, 2, 1.0) == pytest.approx(0.9510565163)   # f = 12/5: sin(3pi/5)
    inputs = ShapingInputs(rewards=torch.tensor([1.0, 1.0, 0.0, 1.0]), correct=torch.tensor([True, True, False, True]),
                           lengths=torch.tensor([5, 5, 5, 5]), truncated=torch.zeros(4, dtype=torch.bool),
                           group_ids=torch.tensor([0, 0, 0, 1]), max_new_tokens=10,
                           generator=torch.Generator(), tool_calls=torch.tensor([1, 2, 0, 0]))
    # group 0: fewest calls among correct = 1 -> 1.0 and sin(2pi/3); wrong stays 0; group 1: none needed -> 1
    assert otc_shaping(inputs).tolist() == pytest.approx([1.0, 3**0.5 / 2, 0.0, 1.0])


def test_tool_calls_reward_component_reads_the_episode():
    task = TASKS.get("multiplication")()
    problem = task.sample_problems(1, 5)[0]
    score = task.score(problem, f"=> {problem.answer}")

    class Episode:
        tool_calls, env_reward = 3, 0.0

    total, parts = compose_reward({"correctness": 1.0, "tool_calls": -0.1}, task, problem, "", score,
                                  {"tool_calls": {"cap": 2}}, episode=Episode())
    assert parts == {"correctness": 1.0, "tool_calls": 2.0} and total == pytest.approx(0.8)


def test_observation_tokens_receive_no_gradient(tiny):
    tok, model = tiny
    task, _, factory = _setup(tok, EnvironmentConfig(name="python", max_turns=2))
    problem = task.sample_problems(1, 6)[0]
    a, b = problem.metadata["a"], problem.metadata["b"]
    scripts = {_prompt(tok, problem): [_ids(tok, f"<code>print({a}*{b})</code>"),
                                       _ids(tok, f"=> {a * b}") + [tok.eos_token_id]]}
    [traj] = sample_trajectories(ScriptedEngine(scripts), model, tok, [problem], max_new_tokens=120,
                                 temperature=1.0, environment=factory)
    batch = make_token_batch([traj.prompt_ids], [traj.response_ids], tok.pad_token_id,
                             response_masks=[traj.loss_mask], response_logprobs=[traj.logprobs])
    logp, _ = token_logprobs(model, batch)
    logp.retain_grad()
    advantages = torch.ones_like(logp)
    per_token, _ = POLICY_LOSSES.get("ppo")(logp, logp.detach(), advantages, batch.target_mask,
                                            clip_low=0.2, clip_high=0.2, clip_c=None)
    aggregate_loss(per_token, batch.target_mask, "token_mean", num_tokens=batch.target_mask.sum(),
                   num_seqs=1, norm_len=120).backward()
    start = len(traj.prompt_ids) - 1
    grad = logp.grad[0, start:start + len(traj.response_ids)]
    mask = torch.tensor(traj.loss_mask, dtype=torch.bool)
    assert (~mask).sum() > 0
    assert torch.all(grad[~mask] == 0)
    assert torch.all(grad[mask] != 0)


def test_sft_masks_real_tool_output(tiny):
    tok, _ = tiny
    config = RunConfig()
    config.task.name, config.task.params = "multiplication", {"tool_demo_rate": 1.0}
    config.rollout.environment = EnvironmentConfig(name="python")
    config.sft.batch_size = 4
    task = TASKS.get("multiplication")()
    factory = build_environment(config.rollout.environment, task, InlineVerifier(task).score_many)
    batch = sft_batch(task, tok, config, 0, frozenset(), factory)
    for row in range(4):
        ids = batch.input_ids[row].tolist()
        text = tok.decode(ids, skip_special_tokens=True)
        a, b = (int(x) for x in text.split("<code>print(")[1].split(")")[0].split("*"))
        assert f"<output>{a * b}\n</output>=> {a * b}" in text
        trained = tok.decode([t for t, m in zip(batch.targets[row].tolist(), batch.target_mask[row].tolist()) if m],
                             skip_special_tokens=True)
        assert trained == f"<code>print({a}*{b})</code>=> {a * b}"


def test_tool_integrated_recipe_runs_end_to_end(tmp_path, tiny_overrides):
    from pathlib import Path

    from rlvr.cli import main

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "tool_integrated.yaml"
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--output-dir", str(run_dir), *tiny_overrides,
                 "rollout.max_new_tokens=40", "task.params.tool_demo_rate=1.0"]) == 0
    run = RunDir(run_dir)
    rl = [m for m in run.read("metrics.jsonl") if m["stage"] == "rl"]
    assert len(rl) == 4
    for key in ("turns", "tool_calls", "tool_use_frac", "tool_error_rate", "void_turn_frac", "violation_frac",
                "observation_token_frac"):
        assert all(0.0 <= m[key] for m in rl), key
    assert all(m["turns"] >= 1.0 for m in rl)


def test_feedback_turns_score_through_the_process_pool_from_many_threads():
    from rlvr.verify import make_verifier

    tok = build_char_tokenizer()
    task = TASKS.get("addition")()
    problems = task.sample_problems(12, 7)
    scripts = {_prompt(tok, p): [_ids(tok, f"=> {int(p.answer) + 1}") + [tok.eos_token_id],
                                 _ids(tok, f"=> {p.answer}") + [tok.eos_token_id]] for p in problems}
    with make_verifier(task, 2, 5.0, 512, True) as verifier:
        factory = build_environment(EnvironmentConfig(name="try_again", max_turns=2), task, verifier.score_many)
        trajs = sample_trajectories(ScriptedEngine(scripts), torch.nn.Linear(1, 1), tok, problems,
                                    max_new_tokens=80, temperature=1.0, environment=factory)
    assert [t.env_reward for t in trajs] == [0.5] * 12  # every second attempt right, each scored once


class CalculatorUser(RolloutEngine):
    """Stateless scripted policy: calls the tool with the prompt's operands, then answers with
    what the tool printed, except for problems whose first operand is odd, where it answers
    straight away with a wrong product (a policy that sometimes skips the tool)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def generate(self, model, prompts, *, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id,
                 generator=None, stop_sequences=()):
        out = []
        for context in prompts:
            text = self.tok.decode(context, skip_special_tokens=False)
            a, b = (int(x) for x in text.split("<|user|>")[1].split("<|assistant|>")[0].split("*"))
            if "</output>" in text:
                printed = text.rsplit("<output>", 1)[1].split("\n")[0]
                turn, reason = _ids(self.tok, f"=> {printed}") + [eos_token_id], "eos"
            elif a % 2:
                turn, reason = _ids(self.tok, f"=> {a * b + 1}") + [eos_token_id], "eos"
            else:
                turn, reason = _ids(self.tok, f"<code>print({a}*{b})</code>"), "stop"
            out.append(Generation(turn, [-0.1] * len(turn), reason, [0.5] * len(turn)))
        return out


def test_evaluation_runs_episodes_and_counts_tool_calls(tiny):
    from rlvr.eval.evaluate import evaluate

    tok, model = tiny
    task, verifier, factory = _setup(tok, EnvironmentConfig(name="python", max_turns=3))
    problems = task.sample_problems(10, 8)
    uses_tool = [p.metadata["a"] % 2 == 0 for p in problems]
    assert 0 < sum(uses_tool) < len(problems)
    result = evaluate(model, tok, task, problems, CalculatorUser(tok), verifier=verifier, samples=2,
                      temperature=1.0, max_new_tokens=120, batch_size=8, seed=0, environment=factory)
    assert result["greedy_accuracy"] == pytest.approx(sum(uses_tool) / len(problems))
    assert result["pass@1"] == pytest.approx(sum(uses_tool) / len(problems))
    assert result["tool_calls"] == pytest.approx(sum(uses_tool) / len(problems))
