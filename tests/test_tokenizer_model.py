"""Tests for rlvr.models: the character tokenizer and tiny-model building / loading."""

import random

import pytest
import torch
from torch.testing import assert_close
from transformers import AutoTokenizer

from rlvr.models import build_char_tokenizer, build_tiny_model, load_model_and_tokenizer
from rlvr.models.tokenizer import (
    ASSISTANT,
    BOS,
    CHAT_TEMPLATE,
    DEFAULT_CHARACTERS,
    EOS,
    PAD,
    SYSTEM,
    UNK,
    USER,
)

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64)
N_SPECIAL = 7


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- tokenizer


def test_special_token_ids_and_vocab_size(tok):
    expected = {PAD: 0, BOS: 1, EOS: 2, UNK: 3, USER: 4, ASSISTANT: 5, SYSTEM: 6}
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == N_SPECIAL + len(DEFAULT_CHARACTERS)
    assert tok.padding_side == "left"


def test_every_character_is_one_token_with_its_own_id(tok):
    for i, ch in enumerate(DEFAULT_CHARACTERS):
        assert _ids(tok, ch) == [N_SPECIAL + i], repr(ch)


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_arbitrary_text(tok, seed):
    rng = random.Random(seed)
    # heavy on the characters a tokenizer likes to mangle: runs of spaces, newlines, edges
    alphabet = DEFAULT_CHARACTERS + "    \n\n"
    text = "  " + "".join(rng.choice(alphabet) for _ in range(300)) + " \n"
    ids = _ids(tok, text)
    assert len(ids) == len(text)
    assert ids == [N_SPECIAL + DEFAULT_CHARACTERS.index(ch) for ch in text]
    assert tok.decode(ids) == text


def test_round_trip_hand_cases(tok):
    for text in ["347+285", "7+5=12 4+8+1=13 3+2+1=6 => 632", "a  b\n\nc", " leading", "trailing ",
                 "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "0123456789"]:
        assert tok.decode(_ids(tok, text)) == text


def test_out_of_vocabulary_char_maps_to_unk(tok):
    assert _ids(tok, "é") == [tok.unk_token_id]
    assert _ids(tok, "1é2") == [_ids(tok, "1")[0], tok.unk_token_id, _ids(tok, "2")[0]]
    assert _ids(tok, "\t") == [tok.unk_token_id]


def test_chat_template_renders_generation_prompt(tok):
    assert tok.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "12+3"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>12+3<|assistant|>"
    # the special strings are single tokens, not character soup
    assert _ids(tok, text) == [4] + _ids(tok, "12+3") + [5]
    full = tok.apply_chat_template(
        [{"role": "system", "content": "s"}, *messages, {"role": "assistant", "content": "15"}],
        add_generation_prompt=False, tokenize=False,
    )
    assert full == "<|system|>s<|user|>12+3<|assistant|>15<|end|>"


def test_duplicate_characters_rejected():
    with pytest.raises(ValueError, match="unique"):
        build_char_tokenizer("abca")


def test_save_and_reload_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    texts = ["347+285", "a  b\nc", "é!", "<|user|>1+2<|assistant|>3<|end|>"]
    for text in texts:
        assert _ids(loaded, text) == _ids(tok, text), text
    assert loaded.chat_template == tok.chat_template
    assert loaded.padding_side == "left"
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 2, 3)
    assert len(loaded) == len(tok)
    batch = loaded(["1", "123"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0] == [0, 0] + _ids(tok, "1")
    assert batch["attention_mask"] == [[0, 0, 1], [1, 1, 1]]


# ----------------------------------------------------------------------------- models


def _params(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_build_tiny_model_is_seeded(tok, arch):
    a = _params(build_tiny_model(tok, architecture=arch, seed=0, **TINY))
    b = _params(build_tiny_model(tok, architecture=arch, seed=0, **TINY))
    c = _params(build_tiny_model(tok, architecture=arch, seed=1, **TINY))
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    random_weights = [n for n in a if not torch.all(a[n] == a[n].flatten()[0])]  # skip constant inits
    assert random_weights
    assert all(not torch.equal(a[n], c[n]) for n in random_weights)


def test_build_tiny_model_does_not_touch_global_rng(tok):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tok, seed=7, **TINY)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_build_tiny_model_config(tok, arch):
    model = build_tiny_model(tok, architecture=arch, seed=0, **TINY)
    cfg = model.config
    assert cfg.model_type == arch
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (len(tok), 32, 2)
    assert (cfg.pad_token_id, cfg.eos_token_id) == (0, 2)
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 0
    assert next(model.parameters()).dtype == torch.float32


def test_unknown_architecture(tok):
    with pytest.raises(ValueError, match="model.architecture"):
        build_tiny_model(tok, architecture="gpt2", **TINY)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_save_and_load_gives_identical_logits(tok, arch, tmp_path):
    model = build_tiny_model(tok, architecture=arch, seed=5, **TINY).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model_and_tokenizer(tmp_path)
    loaded.eval()
    assert type(loaded) is type(model)
    assert loaded_tok.pad_token_id == 0 and loaded_tok.padding_side == "left"
    batch = loaded_tok(["12+3", "4567+890", "x"], padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).logits
        got = loaded(**batch).logits
    assert_close(got, ref, rtol=0, atol=0)
    # and the weights themselves, to catch a lost tie between embedding and head
    assert_close(loaded.lm_head.weight, model.lm_head.weight, rtol=0, atol=0)


def test_load_without_config_names_path(tmp_path):
    empty = tmp_path / "not_a_checkpoint"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_model_and_tokenizer(empty)
    message = str(info.value)
    assert str(empty) in message
    assert "model.path" in message
    with pytest.raises(FileNotFoundError, match="model.path"):
        load_model_and_tokenizer(tmp_path / "does_not_exist")
