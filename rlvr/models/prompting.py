"""The run's prompt settings applied to a tokenizer: ``model.chat_template`` replaces the
checkpoint's chat template, and ``task.system_prompt`` becomes the system message of every
conversation that has none.

Both live in the tokenizer's chat template, so every path that renders a prompt (rollouts,
SFT, evaluation, the start-up checks) sees the same text, and the checkpoints the run writes
carry it: ``rlvr eval`` and a server that loads them render the prompts the model was trained
on. Plain-text prompts (no chat messages) have no system message and are left as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

SYSTEM_PREFIX = ("{%- if messages and messages[0]['role'] != 'system' -%}"
                 "{%- set messages = [{'role': 'system', 'content': %s}] + messages -%}{%- endif -%}")


def resolve_chat_template(spec: str) -> str:
    """``model.chat_template``: a preset (``chatml``, ``llama3``), a path to a Jinja file, or
    the template text itself (anything containing ``{%`` or ``{{``)."""
    from rlvr.models.bpe import TEMPLATES

    if spec in TEMPLATES:
        return TEMPLATES[spec].chat_template
    if "{%" in spec or "{{" in spec:
        return spec
    path = Path(spec).expanduser()
    if path.is_file():
        return path.read_text()
    raise ValueError(f"model.chat_template: {spec!r} is neither a preset ({', '.join(TEMPLATES)}), a Jinja file "
                     "nor template text")


def apply_prompt_settings(tokenizer: PreTrainedTokenizerBase, config: Any) -> PreTrainedTokenizerBase:
    """``tokenizer`` with ``config``'s chat template and system prompt (in place; returned)."""
    template = config.model.chat_template
    if template is not None:
        tokenizer.chat_template = resolve_chat_template(template)
    system = config.task.system_prompt
    if system is not None:
        if tokenizer.chat_template is None:
            raise ValueError("task.system_prompt needs a chat template; the tokenizer has none (set "
                             "model.chat_template)")
        if SYSTEM_PREFIX.split("%s")[0] not in tokenizer.chat_template:  # applied once, whatever the call count
            tokenizer.chat_template = SYSTEM_PREFIX.replace("%s", json.dumps(system)) + tokenizer.chat_template
    return tokenizer
