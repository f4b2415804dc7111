"""Tests for the reasoning-gym adapter: gold answers, strict scoring, wrapped scorers,
the eval guard, curricula, extraction and params. reasoning-gym is imported once (slow)."""

import functools
import random

import pytest

pytest.importorskip("reasoning_gym")

from rlvr.tasks import TASKS  # noqa: E402
from rlvr.tasks.reasoning_gym import ReasoningGymTask, literal_only, sympy_guard  # noqa: E402
from rlvr.typed_yaml import ConfigError, from_dict  # noqa: E402


@functools.cache
def _task(dataset, size=50, strict=True, config=(), difficulty=(), **params):
    """Tasks are cached (building a dataset is the slow part), so ``config`` and
    ``difficulty`` come as hashable tuples of pairs."""
    return ReasoningGymTask(ReasoningGymTask.Params(dataset=dataset, size=size, strict=strict, config=dict(config),
                                                    difficulty=dict(difficulty), **params))


def _problems(dataset, count=10, seed=0, **params):
    return _task(dataset, **params).sample_problems(count, seed=seed)


def _swap_first_two(problem):
    row, rest = problem.answer.split("\n", 1)
    cells = row.split()
    cells[0], cells[1] = cells[1], cells[0]
    return " ".join(cells) + "\n" + rest


def _swap_roles(problem):
    """Everyone's role flipped; the role words vary by problem (hero/villain, pioneer/laggard...)."""
    terms = problem.metadata["entry"]["metadata"]["knight_knave_terms"]
    knight, knave = f"is {terms['a_knight']}", f"is {terms['a_knave']}"
    return problem.answer.replace(knight, "@").replace(knave, knight).replace("@", knave)


WRONG = {  # a wrong answer per dataset, several of them given partial credit by the raw scorer
    "chain_sum": lambda p: p.answer + "0",  # raw: len(gold)/len(answer) partial credit
    "basic_arithmetic": lambda p: str(int(p.answer) + 1),
    "countdown": lambda p: "1+1",  # raw: 0.05 for a parseable wrong expression
    "mini_sudoku": _swap_first_two,
    "knights_knaves": _swap_roles,
}


@pytest.mark.parametrize("dataset", sorted(WRONG))
def test_gold_scores_one_and_wrong_scores_zero(dataset):
    task = _task(dataset)
    rng = random.Random(0)
    for p in _problems(dataset, count=10):
        demo = task.demonstration(p, rng)
        assert demo == f"=> {p.answer}"
        gold = task.score(p, demo)
        assert (gold.reward, gold.correct, gold.error) == (1.0, True, None), (p.id, gold)
        assert gold.extracted == p.answer and gold.components == {"raw": 1.0}
        assert WRONG[dataset](p) != p.answer
        wrong = task.score(p, f"=> {WRONG[dataset](p)}")
        assert (wrong.reward, wrong.correct) == (0.0, False), (p.id, wrong)


def test_gold_self_consistency_200():
    task = _task("chain_sum", size=1000)
    rng = random.Random(1)
    for _ in range(200):
        p = task.generate(rng)
        assert task.score(p, task.demonstration(p, rng)).reward == 1.0


def test_strict_false_passes_partial_credit():
    strict, lenient = _task("chain_sum"), _task("chain_sum", strict=False)
    p = _problems("chain_sum", count=1)[0]
    answer = f"=> {p.answer}0"  # contains the gold answer: raw score len(gold)/len(answer)
    expected = len(p.answer) / (len(p.answer) + 1)
    s, l = strict.score(p, answer), lenient.score(p, answer)
    assert s.components["raw"] == pytest.approx(expected) == l.components["raw"]
    assert 0 < l.reward < 1 and l.reward == pytest.approx(expected) and not l.correct
    assert s.reward == 0.0
    assert lenient.score(p, f"=> {p.answer}").reward == 1.0


def test_prime_factorization_partial_credit_and_non_numeric():
    strict, lenient = _task("prime_factorization"), _task("prime_factorization", strict=False)
    p = next(q for q in _problems("prime_factorization", count=30) if "×" in q.answer)
    product = 1
    for factor in p.answer.split("×"):
        product *= int(factor)
    assert lenient.score(p, f"=> {product}").reward == 0.5  # right product, not a factorisation
    assert strict.score(p, f"=> {product}").reward == 0.0
    assert strict.score(p, "=> " + " × ".join(reversed(p.answer.split(" × ")))).reward == 1.0
    bad = strict.score(p, "=> two times three")  # the raw scorer raises ValueError here
    assert (bad.reward, bad.correct) == (0.0, False)
    assert "prime_factorization scorer raised ValueError" in bad.error


def test_game_of_life_halting_wrapper():
    task = _task("game_of_life_halting", size=20)
    for p in _problems("game_of_life_halting", count=5, size=20):
        assert p.answer in ("True", "False")
        wrong = "False" if p.answer == "True" else "True"
        assert task.score(p, f"=> {wrong}").reward == 0.0
        assert task.score(p, "=> no idea").reward == 0.0
        assert task.score(p, f"=> {p.answer}").reward == 1.0
        assert task.score(p, f"=>  {p.answer.lower()} ").reward == 1.0  # normalised case and spaces


@pytest.mark.parametrize("dataset", ["countdown", "binary_matrix", "spiral_matrix", "n_queens",
                                     "string_insertion", "polynomial_multiplication"])
def test_code_in_answers_never_runs(dataset, tmp_path):
    task = _task(dataset, size=5)
    p = _problems(dataset, count=1, size=5)[0]
    marker = tmp_path / "pwned"
    for payload in [f"__import__('os').system('touch {marker}')",
                    f"[__import__('os').system('touch {marker}')]",
                    f"open('{marker}', 'w')",
                    "exit()"]:
        score = task.score(p, f"=> {payload}")
        assert (score.reward, score.correct) == (0.0, False)
        assert "not passed to" in score.error
    assert not marker.exists()


def test_integral_reward_hack_is_refused():
    task = _task("simple_integration", size=5)
    p = _problems("simple_integration", count=1, size=5)[0]
    meta = p.metadata["entry"]["metadata"]
    hack = f"Integral({meta['integrand']}, {meta['variable']}) + C"
    assert task.dataset.score_answer(hack, p.metadata["entry"]) == 1.0  # why the guard exists
    score = task.score(p, f"=> {hack}")
    assert score.reward == 0.0 and "Call" in score.error
    assert task.score(p, f"=> {p.answer}").reward == 1.0


def test_guards():
    assert literal_only("1 0 1\n0 1 0") is None  # not Python: eval would raise SyntaxError
    assert literal_only("[[1, 0], [0, -1]]") is None
    assert literal_only("EACADB") is None  # a bare name is looked up, never called
    assert literal_only("print(1)") is not None
    assert literal_only("x.y") is not None
    assert literal_only("[0]*10**10") is not None
    algebra = sympy_guard(names=True, functions=frozenset({"sin"}))
    assert algebra("-4*(-2*x - 8)**(3/2)/3 + C") is None
    assert algebra("3*sin(2*x)**2 + E**x") is None
    assert algebra("9**9**9**9") is not None  # power in an exponent
    assert algebra("((2**9)**9)**9") is not None  # powers nested three deep
    assert algebra("(x + 1)**1000 - x**3") is None
    assert algebra("x**1001") is not None
    assert algebra("2**100 + (3/2)**7") is None
    assert algebra("2**101") is not None  # a number's exponent is held to 100
    assert algebra("1000001**2") is not None  # and its base literals to 10**6
    assert algebra("x" + "+x" * 20_000) is not None  # too long
    assert algebra("exp(x)") is not None  # not on this guard's function list
    assert algebra("xy") is not None  # names are single letters
    assert algebra("x.func") is not None
    assert algebra("'x'") is not None
    arithmetic = sympy_guard(names=False)
    assert arithmetic("(8 - 5)*3 + 1/2") is None
    assert arithmetic("x + 1") is not None
    assert arithmetic("2x") is not None


def test_extraction():
    task = _task("chain_sum")
    assert task.extract_answer("12 + 3 => 15") == "15"
    assert task.extract_answer("=> 1 => 2 ") == "2"
    assert task.extract_answer("<answer> 7 </answer>") == "7"
    assert task.extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert task.extract_answer("<think>a => b</think><answer>5</answer>") == "5"
    assert task.extract_answer("<answer>4</answer> => 5") == "5"
    assert task.extract_answer("<answer>=> 6</answer>") == "6"
    assert task.extract_answer("  just 42 \n") == "just 42"
    assert task.extract_answer("=> 1 2\n3 4") == "1 2\n3 4"  # grids span lines
    assert task.extract_answer("   ") is None
    assert task.extract_answer("=>") is None
    p = _problems("chain_sum", count=1)[0]
    empty = task.score(p, "")
    assert (empty.reward, empty.extracted, empty.error) == (0.0, None, "empty answer")
    assert task.score(p, f"<think>...</think><answer>{p.answer}</answer>").correct


def test_problems_deterministic_and_from_the_pool():
    first = _problems("chain_sum", count=20, seed=3)
    assert [p.id for p in first] == [p.id for p in _problems("chain_sum", count=20, seed=3)]
    assert [p.id for p in first] != [p.id for p in _problems("chain_sum", count=20, seed=4)]
    p = first[0]
    index = p.metadata["index"]
    assert p.id == f"chain_sum/0/{index}" and 0 <= index < 50
    entry = _task("chain_sum").dataset[index]
    assert p.prompt == [{"role": "user", "content": entry["question"]}] and p.answer == entry["answer"]
    other_pool = _task("chain_sum", dataset_seed=1)
    assert other_pool.entry(index)["question"] != entry["question"]
    # a fresh task with the same params rebuilds the same pool
    fresh = ReasoningGymTask(ReasoningGymTask.Params(dataset="chain_sum", size=50))
    assert [q.prompt for q in fresh.sample_problems(20, seed=3)] == [q.prompt for q in first]
    with pytest.raises(ValueError, match="distinct problems"):
        _task("chain_sum", size=5).sample_problems(6, seed=0)


def test_items_that_fail_to_generate_are_skipped():
    task = ReasoningGymTask(ReasoningGymTask.Params(dataset="chain_sum", size=50))
    real = task.dataset

    class Flaky:
        def __getitem__(self, index):
            if index % 2:
                raise ValueError("Failed to generate valid expression after 100 attempts")
            return real[index]

    task.dataset = Flaky()
    assert all(p.metadata["index"] % 2 == 0 for p in task.sample_problems(10, seed=0))

    class Broken:
        def __getitem__(self, index):
            raise RuntimeError("no")

    task.dataset, task._entries = Broken(), {}
    with pytest.raises(ValueError, match="all failed; last: generating item .* raised RuntimeError: no"):
        task.generate(random.Random(0))


def test_no_gold_answer_means_no_demonstration():
    task = _task("graph_color", size=5)
    p = task.sample_problems(1, seed=0)[0]
    assert p.answer is None
    with pytest.raises(NotImplementedError, match="no gold answer"):
        task.demonstration(p, random.Random(0))
    assert task.score(p, "=> nonsense").reward == 0.0


def test_difficulty_via_curriculum():
    easy = _task("chain_sum", size=100, difficulty=(("num_terms", 0),))
    assert (easy.dataset.config.min_terms, easy.dataset.config.max_terms) == (2, 2)
    hard = _task("chain_sum", size=100, difficulty=(("num_terms", 6), ("num_digits", 2)))
    assert (hard.dataset.config.min_terms, hard.dataset.config.max_terms) == (2, 8)  # inclusive: levels 0..6
    assert (hard.dataset.config.min_digits, hard.dataset.config.max_digits) == (1, 3)
    top = _task("chain_sum", size=100, difficulty=(("num_terms", 6),), difficulty_mode="upper_bound")
    assert (top.dataset.config.min_terms, top.dataset.config.max_terms) == (8, 8)
    assert (top.dataset.config.min_digits, top.dataset.config.max_digits) == (1, 4)  # untouched default

    def mean_terms(task):
        problems = task.sample_problems(40, seed=0)
        return sum(p.metadata["entry"]["metadata"]["num_terms"] for p in problems) / len(problems)

    assert mean_terms(easy) == 2 and mean_terms(top) == 8 and 2 < mean_terms(hard) < 8


def test_config_passed_to_dataset():
    task = _task("chain_sum", config=(("min_terms", 3), ("max_terms", 3)))
    assert all(p.metadata["entry"]["metadata"]["num_terms"] == 3 for p in task.sample_problems(10, seed=0))


def test_params_validation():
    P = ReasoningGymTask.Params
    with pytest.raises(ValueError, match="size"):
        P(size=0)
    with pytest.raises(ValueError, match="dataset_seed/size"):
        P(config={"seed": 3})
    with pytest.raises(ValueError, match="difficulty"):
        P(difficulty={"num_terms": -1})
    with pytest.raises(ValueError, match="difficulty_mode"):
        P(difficulty_mode="last_k")
    with pytest.raises(ValueError, match="did you mean 'chain_sum'"):
        ReasoningGymTask(P(dataset="chain_sums"))
    with pytest.raises(ValueError, match="no field.*'max_term'.*valid: min_terms"):
        ReasoningGymTask(P(dataset="chain_sum", config={"max_term": 3}))
    with pytest.raises(ValueError, match="no curriculum attribute 'terms'"):
        ReasoningGymTask(P(dataset="chain_sum", difficulty={"terms": 1}))
    with pytest.raises(ValueError, match=r"level 99 out of range 0\.\.10"):
        ReasoningGymTask(P(dataset="chain_sum", difficulty={"num_terms": 99}))
    with pytest.raises(ValueError, match="difficulty also sets"):
        ReasoningGymTask(P(dataset="chain_sum", config={"max_terms": 4}, difficulty={"num_terms": 1}))
    with pytest.raises(ValueError, match="has no curriculum"):
        ReasoningGymTask(P(dataset="gsm_symbolic", difficulty={"x": 1}))
    with pytest.raises(ValueError, match="rejected the config"):
        ReasoningGymTask(P(dataset="chain_sum", config={"min_terms": 5, "max_terms": 2}))
    params = from_dict(P, {"dataset": "countdown", "config": {"min_numbers": 3}, "difficulty": {"numbers": 1},
                           "strict": False}, source="task.params")
    assert params.config == {"min_numbers": 3} and params.difficulty == {"numbers": 1}
    with pytest.raises(ConfigError, match="difficulty"):
        from_dict(P, {"difficulty": {"num_terms": "hard"}}, source="task.params")
    assert TASKS.get("reasoning_gym") is ReasoningGymTask


def _all_datasets():
    from reasoning_gym.factory import DATASETS

    return sorted(set(DATASETS) - {"composite"})


def test_every_dataset_builds_pickles_and_scores_its_gold_answer():
    """Every dataset the task advertises (all of reasoning-gym's): the task builds, survives
    the pickle round trip the verifier workers need (arc_1d and string_manipulation hold
    lambdas; the sympy guards were closures), its problems pickle, and the gold answer of a
    problem drawn from the unpickled task scores 1.0."""
    import pickle

    failures = []
    for name in _all_datasets():
        try:
            task = pickle.loads(pickle.dumps(ReasoningGymTask(ReasoningGymTask.Params(dataset=name, size=5))))
            problem = pickle.loads(pickle.dumps(task.sample_problems(1, seed=0)[0]))
            if problem.answer is None:
                continue  # boxnet, graph_color, ...: no gold answer to score
            score = task.score(problem, f"<answer>{problem.answer}</answer>")
            if score.reward != 1.0:
                failures.append(f"{name}: gold scored {score.reward} ({score.error})")
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    assert len(_all_datasets()) >= 100
    assert not failures, "\n".join(failures)


def test_countdown_scores_in_the_verifier_pool():
    """The blocker users hit: countdown (sympy-guarded) scored in spawned verifier workers."""
    from rlvr.verify.pool import VerifierPool

    task = _task("countdown")
    problems = task.sample_problems(3, seed=1)
    completions = [f"<answer>{p.answer}</answer>" for p in problems[:2]] + ["<answer>__import__('os')</answer>"]
    with VerifierPool(task, workers=1, timeout_s=30) as pool:
        scores = pool.score_many(problems, completions)
    assert [s.reward for s in scores] == [1.0, 1.0, 0.0]
    assert "not passed" in scores[2].error


def test_composite_is_refused_with_the_mix_task_named():
    with pytest.raises(ValueError, match="composite.*`mix` task"):
        ReasoningGymTask(ReasoningGymTask.Params(dataset="composite"))
