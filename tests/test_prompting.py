"""task.system_prompt and model.chat_template: applied to the tokenizer's chat template, so
every rendering path and the run's checkpoints see them."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rlvr.cli import main
from rlvr.config import load_config
from rlvr.models.prompting import apply_prompt_settings, resolve_chat_template
from rlvr.models.tokenizer import build_char_tokenizer
from rlvr.rollout.trajectory import render_prompt
from rlvr.tasks import Problem

USER = [{"role": "user", "content": "12+34"}]


def _text(tokenizer, messages):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_the_system_prompt_goes_before_conversations_without_one():
    tokenizer = apply_prompt_settings(build_char_tokenizer(), load_config(None, ['task.system_prompt="Be brief."']))
    assert _text(tokenizer, USER) == "<|system|>Be brief.<|user|>12+34<|assistant|>"
    own = [{"role": "system", "content": "Mine."}, *USER]
    assert _text(tokenizer, own) == "<|system|>Mine.<|user|>12+34<|assistant|>"  # a prompt's own system message wins
    again = apply_prompt_settings(tokenizer, load_config(None, ['task.system_prompt="Be brief."']))
    assert _text(again, USER) == "<|system|>Be brief.<|user|>12+34<|assistant|>"  # applied once
    tokens = render_prompt(tokenizer, Problem(id="p", prompt=USER, answer="46"))
    assert tokenizer.decode(tokens) == "<|system|>Be brief.<|user|>12+34<|assistant|>"
    assert render_prompt(tokenizer, Problem(id="q", prompt="12+34", answer="46")) == tokenizer("12+34")["input_ids"]


def test_a_chat_template_override_by_preset_file_or_text(tmp_path):
    assert "<|im_start|>" in resolve_chat_template("chatml")
    (tmp_path / "t.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    tokenizer = apply_prompt_settings(build_char_tokenizer(),
                                      load_config(None, [f"model.chat_template={tmp_path / 't.jinja'}"]))
    assert _text(tokenizer, USER) == "[12+34]"
    with pytest.raises(ValueError, match="neither a preset"):
        resolve_chat_template("no_such_template")


def test_a_run_trains_and_saves_with_the_system_prompt(tmp_path, tiny_overrides, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *tiny_overrides, "rl.steps=1",
                 'task.system_prompt="Carry the ones."']) == 0
    saved = AutoTokenizer.from_pretrained(run_dir / "checkpoints" / "final")
    assert _text(saved, USER) == "<|system|>Carry the ones.<|user|>12+34<|assistant|>"
    assert main(["train", "--output-dir", str(tmp_path / "bad"), "model.chat_template=nosuch"]) == 2
    assert "command line override 'model.chat_template=nosuch'" in capsys.readouterr().err
