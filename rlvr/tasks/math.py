"""Math word problems from a data file, checked with math-verify.

Problems are a fixed list read from ``path`` (JSONL, JSON, Parquet, a ``datasets``
directory written by ``save_to_disk``, or a dataset name already in the local Hugging Face
cache; nothing is ever downloaded). Each record gives a question and a reference answer;
the reference is either the whole field, the last ``\\boxed{...}`` in it, or the text after
``####`` (GSM8K, thousands commas removed).

**Held-out split.** By a hash of the problem's id, as for every file-backed task (see
``rlvr.tasks._records``). An id is the record's ``id_field`` when present, else a hash of
the question text (a repeated question keeps its first record).

**Answers.** The completion's answer is its last ``\\boxed{...}`` (balanced braces), else
the text after its last ``####``, else after its last "answer is", else there is none. In the
DeepSeek-R1 layout (``<think>...</think><answer>...</answer>``) only the last ``<answer>``
block is read, the same way, or as a whole when it has none of those markers: what the model
wrote while thinking is never taken for its answer.
Comparison, cheapest first: equal strings; two plain decimals compared exactly (math-verify
rounds to 6 decimals, so 0.1234567 would equal 0.1234568); then math-verify, under a
SIGALRM budget of ``verify_timeout_s`` when running on a main thread. Decisions about
math-verify's quirks:

- a bare list reference ``2, 3`` is a *set* (MATH's "enter all solutions separated by
  commas"), so ``3, 2`` is right;
- a bracketed reference ``(2, 3)`` / ``[2, 3]`` is *ordered* (a point, vector or interval):
  math-verify already rejects ``(3, 2)``, and we also reject a set ``\\{2, 3\\}`` (which
  it accepts) and check a bare ``2, 3`` element by element, in order;
- digits grouped in threes with commas (``1,234``, ``1{,}234``) are one number.

Scoring may hang or eat memory on a pathological completion (``10^{10^{10^{10}}}``), so the
task sets ``isolate = True``: the trainer scores it in ``rlvr.verify.VerifierPool`` worker
processes, whose timeout and memory limit are the real guard.
"""

from __future__ import annotations

import random
import re
import signal
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar, Iterator, Literal

from rlvr.tasks import _records
from rlvr.tasks._records import FileParams, FileTask, is_heldout, require_field, text_id
from rlvr.tasks.base import ANSWER_BLOCK, TASKS, Problem, Score

__all__ = ["MathTask", "answers_match", "boxed_contents", "extract_final_answer", "is_heldout", "load_problems",
           "reference_answer"]


@TASKS.register("math")
class MathTask(FileTask):
    """Problems from a file; answers checked with math-verify (see the module docstring)."""

    name = "math"
    isolate: ClassVar[bool] = True

    @dataclass
    class Params(FileParams):
        question_field: str = field(default="question", metadata={"help": "record field holding the question"})
        answer_field: str = field(default="answer", metadata={
            "help": "record field holding the reference answer (see answer_format)"})
        solution_field: str | None = field(default=None, metadata={
            "help": "record field holding a worked solution, used as the SFT demonstration; null: no SFT"})
        answer_format: Literal["auto", "boxed", "gsm8k"] = field(default="auto", metadata={
            "help": "how to read the reference: gsm8k = text after '####' (commas removed), boxed = last "
                    "\\boxed{...}, auto = gsm8k if '####' is present, else boxed if \\boxed is, else the whole field"})
        prompt_template: str = field(default="{question}\nPut your final answer within \\boxed{{}}.", metadata={
            "help": "str.format template of the prompt with {question}; write literal braces doubled"})
        verify_timeout_s: float = field(default=3.0, metadata={
            "help": "seconds math-verify may spend on one completion before it counts as wrong "
                    "(SIGALRM, main thread only; 0 disables); keep it below the verifier pool's timeout", "ge": 0})

        def __post_init__(self) -> None:
            super().__post_init__()
            if "{question}" not in self.prompt_template:
                raise ValueError("prompt_template must contain {question}")
            try:
                self.prompt_template.format(question="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"prompt_template is not a valid str.format template with only "
                                 f"{{question}} ({e}); write literal braces doubled: \\boxed{{{{}}}}") from None

    def to_problem(self, record: dict[str, Any], where: str) -> Problem:
        return _problem(record, where, self.params)

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        solution = problem.metadata.get("solution")
        if solution is None:
            raise NotImplementedError("math task has no demonstrations: set solution_field to a worked-solution field")
        if extract_final_answer(solution) is None:  # teach the answer format the prompt asks for
            solution = f"{solution.rstrip()}\nThe final answer is \\boxed{{{problem.answer}}}."
        return solution

    # ------------------------------------------------------------------------- scoring

    def extract_answer(self, completion: str) -> str | None:
        return extract_final_answer(completion)

    def answer_text(self, answer: str) -> str:
        return answer if extract_final_answer(answer) is not None else "\\boxed{" + answer + "}"

    def score(self, problem: Problem, completion: str) -> Score:
        extracted = self.extract_answer(completion)
        if extracted is None:
            return Score(reward=0.0, correct=False, extracted=None)
        budget = self.params.verify_timeout_s
        try:
            with _alarm(budget) if budget > 0 else nullcontext():
                correct = answers_match(str(problem.answer), extracted)
        except _VerifyTimeout:
            return Score(reward=0.0, correct=False, extracted=extracted,
                         error=f"math-verify timeout after {budget:g} s")
        return Score(reward=float(correct), correct=correct, extracted=extracted)

    def warm_up(self) -> None:
        """Import math-verify and build its parsers (the pool's workers call this before their
        first item, so the ~0.5 s of start-up does not count against an item's timeout)."""
        answers_match("\\frac{1}{2}", "0.5")


# ----------------------------------------------------------------------------- loading


def load_problems(params: MathTask.Params) -> list[Problem]:
    """The file's problems in order, one per distinct id, capped at ``max_problems``."""
    return _records.load_problems(params.path, params.split, params.max_problems,
                                  lambda record, where: _problem(record, where, params), "math")


def _problem(record: dict[str, Any], where: str, params: MathTask.Params) -> Problem:
    question = str(require_field(record, params.question_field, where, "question_field"))
    raw_answer = str(require_field(record, params.answer_field, where, "answer_field"))
    solution = None
    if params.solution_field is not None:
        solution = str(require_field(record, params.solution_field, where, "solution_field"))
    try:
        answer = reference_answer(raw_answer, params.answer_format)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if record.get(params.id_field) is not None:
        problem_id = str(record[params.id_field])
    else:
        problem_id = text_id(question)
    text = params.prompt_template.format(question=question)
    prompt: str | list[dict[str, str]] = [{"role": "user", "content": text}] if params.chat else text
    return Problem(id=problem_id, prompt=prompt, answer=answer,
                   metadata={"question": question, "solution": solution, "source": where})


# ----------------------------------------------------------------------------- answers

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?[ \t]*([^\n]+)", re.IGNORECASE)
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:(?:,|\{,\})\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_SET_LITERAL = re.compile(r"^(?:\\left)?\s*\\\{")
_OPEN, _CLOSE = "([{", ")]}"


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, in order
    (escaped ``\\{`` ``\\}`` do not count; an unclosed box is skipped)."""
    found = []
    for match in _BOXED.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            i += 1
        if depth == 0:
            found.append(text[match.end():i - 1])
    return found


def _tidy(answer: str) -> str:
    """Without surrounding blanks, ``$`` and a sentence's final period."""
    return answer.strip().rstrip(" \t.$").lstrip(" \t$")


def _after_answer_is(text: str) -> str:
    """The answer in the rest of an "answer is ..." line: its first ``$...$`` span if it has
    one, else the words up to the end of the sentence."""
    math = re.search(r"\$([^$]+)\$", text)
    return math.group(1) if math else re.split(r"\.\s", text, maxsplit=1)[0]


def extract_final_answer(text: str) -> str | None:
    """The last non-empty ``\\boxed{...}``, else the text after the last ``####``, else after
    the last "answer is"; None when there is none. A completion in the DeepSeek-R1 layout
    (``<think>...</think><answer>...</answer>``) is read inside its last ``<answer>`` block
    only, where the block's whole text is the answer when none of those markers is in it."""
    blocks = ANSWER_BLOCK.findall(text)
    if blocks:
        inner = blocks[-1]
        return _marked_answer(inner) or _tidy(inner) or None
    return _marked_answer(text)


def _marked_answer(text: str) -> str | None:
    for candidates in ([_tidy(b) for b in boxed_contents(text)],
                       [_tidy(m) for m in _HASHES.findall(text)],
                       [_tidy(_after_answer_is(m)) for m in _ANSWER_IS.findall(text)]):
        candidates = [c for c in candidates if c]
        if candidates:
            return candidates[-1]
    return None


def reference_answer(raw: str, answer_format: str) -> str:
    """The reference answer inside a dataset's answer field (see ``Params.answer_format``)."""
    if answer_format == "gsm8k" or (answer_format == "auto" and "####" in raw):
        found = _HASHES.findall(raw)
        if not found or not _tidy(found[-1]):
            raise ValueError("answer has no '#### <answer>' line, which answer_format 'gsm8k' needs")
        return _tidy(found[-1]).replace(",", "")
    if answer_format == "boxed" or (answer_format == "auto" and _BOXED.search(raw)):
        boxes = [b.strip() for b in boxed_contents(raw) if b.strip()]
        if not boxes:
            raise ValueError("answer has no \\boxed{...}, which answer_format 'boxed' needs")
        return boxes[-1]
    answer = _tidy(raw)
    if not answer:
        raise ValueError("the answer is empty")
    return answer


def _normalise(answer: str) -> str:
    answer = _tidy(answer)
    if _THOUSANDS.fullmatch(answer):
        answer = answer.replace("{,}", "").replace(",", "")
    return answer


def _strip_left_right(answer: str) -> str:
    return re.sub(r"\\(?:left|right)\b\s*", "", answer).strip()


def _enclosed(s: str) -> bool:
    """Whether ``s`` is one bracketed group ``(...)`` / ``[...]`` (mixed ends allowed, as in
    the interval ``[a, b)``): the first bracket closes at the last character."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch in _OPEN) - (ch in _CLOSE)
        if depth == 0:
            return i == len(s) - 1
    return False


def _split_top_level(answer: str) -> list[str] | None:
    """Elements of a bracketed list ``(a, b)`` / ``[a, b]`` (``\\left``/``\\right`` allowed) or a
    bare ``a, b``, split at top-level commas; None when there is no top-level comma."""
    s = _strip_left_right(answer)
    if _enclosed(s):
        s = s[1:-1]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        depth += (ch in _OPEN) - (ch in _CLOSE)
        if ch == "," and depth == 0:
            parts.append(s[start:i].strip())
            start = i + 1
    parts.append(s[start:].strip())
    return parts if len(parts) > 1 else None


def _is_ordered(reference: str) -> bool:
    """A bracketed list with a top-level comma: a point, vector or interval."""
    s = _strip_left_right(reference)
    return _enclosed(s) and _split_top_level(s) is not None


def answers_match(reference: str, answer: str) -> bool:
    """Whether ``answer`` states the same value as ``reference`` (see the module docstring)."""
    ref, ans = _normalise(reference), _normalise(answer)
    if ref == ans:
        return True
    if _DECIMAL.fullmatch(ref) and _DECIMAL.fullmatch(ans):
        return Fraction(ref) == Fraction(ans)
    if not _math_verify(ref, ans):
        return False
    if _is_ordered(ref):
        if _SET_LITERAL.match(ans):
            return False
        ref_items, ans_items = _split_top_level(ref), _split_top_level(ans)
        if ans_items is not None:
            return len(ref_items) == len(ans_items) and all(
                _math_verify(r, a) for r, a in zip(ref_items, ans_items))
    return True


def _math_verify(reference: str, answer: str) -> bool:
    import math_verify.grader
    import math_verify.parser
    from math_verify import parse, verify

    # Timeouts off: math-verify's own signal.alarm would cancel ours (they share one timer)
    # and fails off the main thread; the caller's alarm and the pool's kill are the guards.
    # That is deliberate, so silence the warning it logs about it once per process.
    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=None)
    if not gold:
        return _loose(reference) == _loose(answer)
    pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
    return bool(pred) and verify(gold, pred, timeout_seconds=None)


def _loose(answer: str) -> str:
    answer = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", answer)
    return re.sub(r"\s+", "", answer).lower()


class _VerifyTimeout(BaseException):
    """Raised by our SIGALRM handler; a BaseException so math-verify's and sympy's
    ``except Exception`` blocks cannot swallow it."""


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise ``_VerifyTimeout`` in the block after ``seconds``; a no-op off the main thread
    (signals only reach it) or when another timer is already armed (we would cancel it)."""
    if threading.current_thread() is not threading.main_thread() or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _VerifyTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
