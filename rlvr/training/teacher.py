"""The teacher role (``teacher.path``): a frozen causal LM whose log-probs of the policy's
sampled tokens drive KDRL's and on-policy distillation's reverse-KL term
(``rlvr.algorithms.distill``). The student's token ids go to the teacher unchanged, so both
must share one tokenizer: a teacher whose vocabulary differs is a config error before any
work (rlvr does not re-tokenise between vocabularies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlvr.typed_yaml import ConfigError, source_of


def teacher_checkpoint(config: Any, source: str = "config") -> Path:
    """The checkpoint directory ``teacher.path`` names (a run directory gives its final
    checkpoint, a hub id its cached snapshot); a ConfigError naming the field otherwise."""
    from rlvr.eval.compare import resolve_target

    try:
        return resolve_target(config.teacher.path).checkpoint
    except ConfigError as err:
        raise ConfigError(f"{source_of(source, 'teacher.path')}: teacher.path: {err}") from None


def check_teacher(config: Any, student_tokenizer: PreTrainedTokenizerBase, source: str = "config") -> None:
    """Fail before any work when the teacher cannot be read or its tokenizer is not the
    student's (reads the tokenizer and config only, no weights)."""
    from rlvr.models.prompt_fit import checkpoint_tokenizer

    if not config.teacher.path:
        return
    where = f"{source_of(source, 'teacher.path')}: teacher.path"
    checkpoint = teacher_checkpoint(config, source)
    try:
        teacher_tokenizer, _ = checkpoint_tokenizer(checkpoint)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    mismatch = vocabulary_mismatch(student_tokenizer, teacher_tokenizer)
    if mismatch:
        raise ConfigError(f"{where}: the teacher's tokenizer is not the student's ({mismatch}); the teacher scores "
                          "the student's token ids, so both need the same vocabulary (rlvr does not re-tokenise)")


def vocabulary_mismatch(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> str | None:
    """How two tokenizers' vocabularies differ (size, or the first token whose id differs),
    or None when they map every token to the same id."""
    a, b = student.get_vocab(), teacher.get_vocab()
    if a == b:
        return None
    if len(a) != len(b):
        return f"{len(b)} tokens against the student's {len(a)}"
    for token in sorted(set(a) | set(b), key=lambda t: (a.get(t, len(a)), t)):
        if a.get(token) != b.get(token):
            return f"token {token!r} has id {b.get(token)} in the teacher, {a.get(token)} in the student"
    return "the vocabularies differ"


def load_teacher(config: Any, device: Any) -> PreTrainedModel:
    """The teacher, frozen (eval mode, no gradients) on ``device``, float32 master weights
    like the policy's (autocast gives it the run's compute precision)."""
    from rlvr.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(teacher_checkpoint(config), attn_implementation=config.model.attn_implementation)
    return model.eval().requires_grad_(False).to(device)
