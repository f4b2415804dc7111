"""Do a task's texts fit the model? Checked before a run or an evaluation starts.

A prompt longer than the model's context leaves no room for the response (positions past
``max_position_embeddings`` are extrapolated silently), and a character the tokenizer has
no token for becomes ``<unk>``: the model trains on text it cannot see. Both are found by
rendering a sample of the task's prompts (and SFT demonstrations) with the tokenizer the
run will use, so they fail as config errors naming the problem and the character.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from rlvr.config import DataConfig
from rlvr.models.hub import resolve_model_path
from rlvr.rollout.trajectory import render_prompts, truncate_left
from rlvr.tasks._records import FileTask
from rlvr.tasks.base import Problem, Task


def checkpoint_tokenizer(path: str | Path) -> tuple[PreTrainedTokenizerBase, int | None]:
    """The tokenizer of a checkpoint (a local directory or a hub id) and its context length
    (``None`` if its config.json names none), without loading the weights; ValueError if
    ``path`` is not a checkpoint or a hub id cannot be had."""
    path = resolve_model_path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{str(path)!r} is not a Hugging Face checkpoint directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = json.loads((path / "config.json").read_text())
    except Exception as err:  # transformers raises OSError, ValueError, TypeError... with multi-line text
        raise ValueError(f"{str(path)!r}: cannot load its tokenizer or config.json: {' '.join(str(err).split())}") \
            from None
    check_weight_files(path)
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return tokenizer, positions if isinstance(positions, int) else None


def checkpoint_head_dim(path: str | Path) -> int | None:
    """The attention head size a checkpoint's config.json declares (``head_dim``, else
    hidden_size / num_attention_heads); None when it says neither."""
    try:
        config = json.loads((resolve_model_path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(config.get("head_dim"), int):
        return config["head_dim"]
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None


def check_weight_files(path: Path) -> None:
    """ValueError naming the file when a checkpoint's safetensors weights are missing or
    damaged (a truncated file, a bad header): read from each file's header alone, which
    safetensors checks against the file's length, so no tensor is loaded."""
    files = sorted(path.glob("*.safetensors"))
    if not files and not any(path.glob("pytorch_model*.bin")):
        raise ValueError(f"{str(path)!r} has no weights (no *.safetensors or pytorch_model*.bin file)")
    for file in files:
        try:
            with safe_open(file, framework="pt") as weights:
                weights.keys()
        except Exception as err:  # SafetensorError and OSError
            raise ValueError(f"{str(file)!r} is damaged ({' '.join(str(err).split())}); "
                             "use an intact checkpoint") from None


def _prompt_chars(problem: Problem) -> str:
    if isinstance(problem.prompt, str):
        return problem.prompt
    return "".join(str(message.get("content", "")) for message in problem.prompt)


def _unencodable(tokenizer: PreTrainedTokenizerBase, text: str) -> str | None:
    """The first character of ``text`` that the tokenizer maps to its unknown token."""
    unk = tokenizer.unk_token_id
    chars = list(dict.fromkeys(text))
    rows = tokenizer(chars, add_special_tokens=False)["input_ids"]
    return next((ch for ch, row in zip(chars, rows) if unk in row), None)


def _check_unknown(tokenizer: PreTrainedTokenizerBase, rows: Sequence[list[int]], texts: Sequence[str],
                   problems: Sequence[Problem], what: str) -> None:
    unk = tokenizer.unk_token_id
    if unk is None:  # byte-level tokenizers encode every character
        return
    for problem, row, text in zip(problems, rows, texts):
        if unk in row:
            ch = _unencodable(tokenizer, text) or "?"
            raise ValueError(f"{what} of problem {problem.id!r} contains {ch!r} (U+{ord(ch[0]):04X}), which the "
                             f"tokenizer cannot encode (it would become {tokenizer.unk_token}); use a tokenizer "
                             "that covers it or remove it from the task's data")


def check_prompts_fit(tokenizer: PreTrainedTokenizerBase, max_positions: int | None, max_new_tokens: int,
                      problems: Sequence[Problem], what: str,
                      demonstrations: Sequence[str] | None = None, data: DataConfig | None = None) -> None:
    """Raise ValueError when a prompt (+ ``max_new_tokens``) or a prompt + its SFT
    demonstration (+ EOS) is longer than ``max_positions``, when either holds a character
    the tokenizer cannot encode, or when a prompt is longer than ``data.max_prompt_length``
    and ``data.overlong_prompts`` is not truncate_left (whose prompts are measured truncated).
    ``what`` names the problems in the message (e.g. "held-out problems");
    ``demonstrations`` pairs with ``problems`` when given."""
    if not problems:
        return
    rows = render_prompts(tokenizer, list(problems))
    _check_unknown(tokenizer, rows, [_prompt_chars(p) for p in problems], problems, f"the prompt ({what})")
    if data is not None and data.max_prompt_length is not None:
        if data.overlong_prompts == "truncate_left":
            rows = truncate_left(rows, data.max_prompt_length)[0]
        else:
            check_prompt_lengths([len(row) for row in rows], problems, data.max_prompt_length, f"sampled prompts ({what})",
                                 ValueError)
    if max_positions is not None:
        longest = max(range(len(rows)), key=lambda i: len(rows[i]))
        if len(rows[longest]) + max_new_tokens > max_positions:
            too_long = sum(len(row) + max_new_tokens > max_positions for row in rows)
            raise ValueError(
                f"{too_long} of {len(rows)} sampled prompts ({what}) do not fit the model's context: problem "
                f"{problems[longest].id!r} has {len(rows[longest])} prompt tokens + rollout.max_new_tokens "
                f"{max_new_tokens} > {max_positions} positions; lower rollout.max_new_tokens or use a model "
                "with a longer context (model.max_position_embeddings for the tiny model)")
    if demonstrations is None:
        return
    demo_rows = tokenizer(list(demonstrations), add_special_tokens=False)["input_ids"]
    _check_unknown(tokenizer, demo_rows, demonstrations, problems, f"the SFT demonstration ({what})")
    if max_positions is not None:
        lengths = [len(p) + len(d) + 1 for p, d in zip(rows, demo_rows)]  # + EOS
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] > max_positions:
            raise ValueError(
                f"the SFT demonstration of problem {problems[longest].id!r} with its prompt is {lengths[longest]} "
                f"tokens > {max_positions} positions of the model; use a model with a longer context "
                "(model.max_position_embeddings for the tiny model) or a task with shorter demonstrations")


class ContextLengthError(ValueError):
    """A sequence met during training does not fit the model's context (the start-up check
    samples step 0 only; later draws, a curriculum or a mix can be longer)."""


def check_fits_context(lengths: Sequence[int], max_positions: int | None, what: str) -> None:
    """Raise ``ContextLengthError`` when the longest of ``lengths`` (tokens) exceeds
    ``max_positions``; ``what`` says where the sequences come from (e.g. "RL step 7: a prompt
    + rollout.max_new_tokens")."""
    if max_positions is not None and lengths and max(lengths) > max_positions:
        raise ContextLengthError(
            f"{what} is {max(lengths)} tokens, longer than the model's {max_positions} positions "
            f"({sum(n > max_positions for n in lengths)} of {len(lengths)} sequences); use a model with a longer "
            "context (model.max_position_embeddings for the tiny model), lower rollout.max_new_tokens, or bound "
            "the task's lengths (its params, data.curriculum.maximum)")


def check_prompt_lengths(lengths: Sequence[int], problems: Sequence[Problem], max_prompt_length: int, what: str,
                         error: type[ValueError] = ContextLengthError) -> None:
    """Raise ``error`` naming the longest prompt when any of ``lengths`` (tokens, one per
    problem) exceeds ``data.max_prompt_length`` (``data.overlong_prompts: error``)."""
    if not lengths or max(lengths) <= max_prompt_length:
        return
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    raise error(f"{sum(n > max_prompt_length for n in lengths)} of {len(lengths)} {what} are longer than "
                f"data.max_prompt_length={max_prompt_length} tokens: problem {problems[longest].id!r} has "
                f"{lengths[longest]}; raise data.max_prompt_length, or set data.overlong_prompts to truncate_left "
                "(keep each prompt's end, as TRL does) or drop (remove them from the data, verl's "
                "filter_overlong_prompts)")


def drop_overlong_prompts(task: Task, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int) -> tuple[int, int]:
    """Remove from a file-backed task's data every problem whose rendered prompt is longer
    than ``max_prompt_length`` tokens (``data.overlong_prompts: drop``, verl's
    ``filter_overlong_prompts``), before any split is drawn; returns (dropped, total).
    ValueError for a task that generates its problems, or when no problem is left."""
    if not isinstance(task, FileTask):
        raise ValueError(f"data.overlong_prompts: drop removes problems from a task's data file, and task "
                         f"{task.name!r} generates its problems: bound their size with its params, or set "
                         "data.overlong_prompts to truncate_left or error")
    problems = task.problems
    lengths = [len(row) for row in render_prompts(tokenizer, problems)]
    overlong = {p.id for p, n in zip(problems, lengths) if n > max_prompt_length}
    if problems and len(overlong) == len(problems):
        raise ValueError(f"data.max_prompt_length={max_prompt_length}: every prompt of task {task.name!r} is longer "
                         f"(the shortest has {min(lengths)} tokens), so data.overlong_prompts: drop leaves nothing")
    task.drop_problems(overlong)
    return len(overlong), len(problems)
