"""Byte-level BPE tokenizers built in code (Qwen2.5 ChatML and Llama 3 layouts), random
checkpoints written to disk, and generation that stops at any of a checkpoint's EOS ids."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from rlvr.models import bpe
from rlvr.models.bpe import MAX_VOCAB_SIZE, TEMPLATES, build_bpe_tokenizer, vocab_size_range
from rlvr.models.loading import eos_token_ids, load_model_and_tokenizer
from rlvr.models.random_checkpoint import SHAPES, main, model_config, parameter_counts, write_random_checkpoint
from rlvr.rollout.engine import Generation, RolloutEngine, eos_argument, eos_ids
from rlvr.rollout.kv_cache import KVCacheEngine
from rlvr.rollout.sampling import sample_trajectories
from rlvr.rollout.trajectory import render_prompts
from rlvr.tasks import TASKS, Problem

REPO = Path(__file__).resolve().parents[1]

TEXTS = [
    "12345+678=13023",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\r\nCRLF\n\n\nblank lines",
    "<think>\n7+8=15, write 5 carry 1\n</think>\n<answer>15</answer>",
    "def f(x):\n    return x ** 2  # square\n",
    "café naïve Ωmega π≈3.14159 数学 答案 русский 😀🚀 👩‍💻 עברית",
    "\u200b zero width, \u00a0nbsp, \ufeffbom, \x00nul, \U0010ffff",
    "<|im_end|> <|eot_id|> literal special strings",
    "",
]


@pytest.fixture(scope="module")
def chatml():
    return build_bpe_tokenizer("chatml", 4096)


@pytest.fixture(scope="module")
def llama3():
    return build_bpe_tokenizer("llama3", 4096)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("template", ["chatml", "llama3"])
@pytest.mark.parametrize("size", ["min", 1000, 4096, 32768])
def test_vocab_size_is_exact(template, size):
    size = vocab_size_range(template)[0] if size == "min" else size
    tok = build_bpe_tokenizer(template, size)
    assert len(tok) == size
    assert tok.backend_tokenizer.get_vocab_size(with_added_tokens=True) == size
    assert len(set(tok.get_vocab().values())) == size and max(tok.get_vocab().values()) == size - 1
    specials = TEMPLATES[template].specials
    # the specials are the last ids, in the real checkpoints' order
    assert tok.convert_tokens_to_ids(list(specials)) == list(range(size - len(specials), size))


def test_largest_vocab_size_is_reached():
    assert len(build_bpe_tokenizer("chatml", MAX_VOCAB_SIZE)) == MAX_VOCAB_SIZE


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_vocab_size_outside_range_is_an_error(template):
    low, high = vocab_size_range(template)
    assert low == 256 + len(TEMPLATES[template].specials)
    for size in (low - 1, high + 1):
        with pytest.raises(ValueError, match=f"vocab_size {size} is outside"):
            build_bpe_tokenizer(template, size)
    with pytest.raises(ValueError, match="template must be one of"):
        build_bpe_tokenizer("chatml2", 4096)


def test_training_is_deterministic_and_seeded():
    def trained(seed):
        bpe._trained.cache_clear()  # train again, not read the cache
        return build_bpe_tokenizer("chatml", 2000, seed=seed).backend_tokenizer.to_str()

    first, again, other = trained(0), trained(0), trained(1)
    assert first == again
    assert first != other
    # a fresh object per call: changing one does not change the next
    tok = build_bpe_tokenizer("chatml", 2000)
    tok.padding_side = "right"
    assert build_bpe_tokenizer("chatml", 2000).padding_side == "left"


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_round_trip_any_text(template, chatml, llama3):
    tok = {"chatml": chatml, "llama3": llama3}[template]
    assert tok.unk_token_id is None  # byte level: nothing is unknown
    for text in TEXTS:
        assert tok.decode(_ids(tok, text)) == text, text
    decomposed = "e\u0301 A\u030a"  # not NFC: Qwen2 normalizes it, Llama 3 keeps it
    expected = unicodedata.normalize("NFC", decomposed) if template == "chatml" else decomposed
    assert tok.decode(_ids(tok, decomposed)) == expected


def test_merges_and_digit_splitting(chatml, llama3):
    # Qwen2 gives every digit its own token, Llama 3 groups up to three
    assert chatml.convert_ids_to_tokens(_ids(chatml, "12345")) == list("12345")
    assert llama3.convert_ids_to_tokens(_ids(llama3, "12345")) == ["123", "45"]
    for tok in (chatml, llama3):
        assert len(_ids(tok, " the answer is")) == 3  # merged words, a leading space in each
        assert len(_ids(tok, "assistant")) == 1
        # special strings are one token each, in text too
        assert _ids(tok, tok.eos_token) == [tok.eos_token_id]


def test_special_tokens_and_padding(chatml, llama3):
    assert (chatml.eos_token, chatml.pad_token, chatml.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert (llama3.eos_token, llama3.pad_token, llama3.bos_token) == (
        "<|eot_id|>", "<|finetune_right_pad_id|>", "<|begin_of_text|>")
    assert chatml.padding_side == llama3.padding_side == "left"
    # Llama 3 puts BOS in front when special tokens are added; Qwen adds nothing
    assert llama3("hi")["input_ids"] == [llama3.bos_token_id] + _ids(llama3, "hi")
    assert chatml("hi")["input_ids"] == _ids(chatml, "hi")
    batch = chatml(["1", "1+1"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0] == [chatml.pad_token_id] * 2 + _ids(chatml, "1")


CONVERSATION = [
    {"role": "system", "content": "You add numbers."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<answer>4</answer>"},
    {"role": "user", "content": "3+5?"},
    {"role": "assistant", "content": "<answer>8</answer>"},
]


def test_chatml_template_is_qwen25s(chatml):
    assert chatml.apply_chat_template(CONVERSATION, tokenize=False) == (
        "<|im_start|>system\nYou add numbers.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<answer>4</answer><|im_end|>\n"
        "<|im_start|>user\n3+5?<|im_end|>\n"
        "<|im_start|>assistant\n<answer>8</answer><|im_end|>\n")
    # no system message: Qwen2.5's default one
    opened = chatml.apply_chat_template(CONVERSATION[1:4], add_generation_prompt=True, tokenize=False)
    assert opened == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<answer>4</answer><|im_end|>\n"
        "<|im_start|>user\n3+5?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert opened.endswith("<|im_start|>assistant\n")


def test_llama3_template_is_llama3_instructs(llama3):
    assert llama3.apply_chat_template(CONVERSATION, tokenize=False) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou add numbers.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<answer>4</answer><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n3+5?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<answer>8</answer><|eot_id|>")
    opened = llama3.apply_chat_template(CONVERSATION[1:4], add_generation_prompt=True, tokenize=False)
    assert opened == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n<answer>4</answer><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n3+5?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_save_and_load_round_trip(template, chatml, llama3, tmp_path):
    tok = {"chatml": chatml, "llama3": llama3}[template]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(loaded) == len(tok)
    assert loaded.chat_template == tok.chat_template
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.bos_token_id, loaded.unk_token_id) == (
        tok.eos_token_id, tok.pad_token_id, tok.bos_token_id, None)
    assert loaded.padding_side == "left"
    for text in TEXTS:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"], text
    assert loaded.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False) == \
        tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_task_prompts_render_through_the_templates(template, chatml, llama3):
    """render_prompts: the chat template with the assistant turn opened, special strings as
    single ids, exactly one BOS for Llama 3 (the template's; none added on top) and none for Qwen;
    a plain-text prompt gets what ``tokenizer(text)`` puts in front (Llama 3's BOS)."""
    tok = {"chatml": chatml, "llama3": llama3}[template]
    header = _ids(tok, "<|im_start|>assistant\n" if template == "chatml"
                  else "<|start_header_id|>assistant<|end_header_id|>\n\n")
    problems = [p for name in ("addition", "countdown", "sort", "pointer_chase")
                for p in TASKS.get(name)().sample_problems(2, 0)]
    problems.append(Problem(id="plain", prompt="12+3=", answer="15"))
    for problem, ids in zip(problems, render_prompts(tok, problems)):
        if isinstance(problem.prompt, str):  # Llama 3 puts its BOS in front of plain text, Qwen nothing
            assert ids == ([tok.bos_token_id] if template == "llama3" else []) + _ids(tok, "12+3=")
            assert ids == tok("12+3=")["input_ids"]
            continue
        text = tok.apply_chat_template(problem.prompt, add_generation_prompt=True, tokenize=False)
        assert tok.decode(ids) == text
        assert ids[-len(header):] == header
        assert problem.prompt[0]["content"] in text
        if template == "llama3":
            assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        else:
            assert tok.pad_token_id not in ids and ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


def test_feedback_turn_text_through_both_templates(chatml, llama3):
    """What the multi-turn loop appends after the policy's EOS for a user message."""
    from rlvr.rollout.multi_turn import chat_turn_text

    assert chat_turn_text(chatml, "Try again.") == "\n<|im_start|>user\nTry again.<|im_end|>\n<|im_start|>assistant\n"
    assert chat_turn_text(llama3, "Try again.") == (
        "<|start_header_id|>user<|end_header_id|>\n\nTry again.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {shape: write_random_checkpoint(root / shape, shape=shape) for shape in ("qwen2-tiny", "llama3-tiny")}


def test_checkpoint_files_and_generation_config(checkpoints):
    qwen, llama = checkpoints["qwen2-tiny"], checkpoints["llama3-tiny"]
    for path in (qwen, llama):
        assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json"} <= {p.name for p in path.iterdir()}
    v = 4096  # specials: the last ids in layout order
    endoftext, im_end = v - 3, v - 1
    gen = json.loads((qwen / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [im_end, endoftext]  # as Qwen2.5-Instruct's
    assert gen["pad_token_id"] == gen["bos_token_id"] == endoftext
    config = json.loads((qwen / "config.json").read_text())
    assert (config["model_type"], config["eos_token_id"], config["vocab_size"]) == ("qwen2", im_end, v)
    begin, end, pad, eot = v - 6, v - 5, v - 4, v - 1
    gen = json.loads((llama / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["pad_token_id"], gen["bos_token_id"]) == ([end, eot], pad, begin)
    assert json.loads((llama / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize("shape, expected", [("qwen2-tiny", "<|im_end|> <|endoftext|>"),
                                             ("llama3-tiny", "<|end_of_text|> <|eot_id|>")])
def test_checkpoint_loads_with_both_eos_ids(checkpoints, shape, expected):
    model, tok = load_model_and_tokenizer(checkpoints[shape])
    spec = SHAPES[shape]
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (spec.num_heads, spec.num_kv_heads)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    assert (model.model.layers[0].self_attn.q_proj.bias is not None) == (spec.architecture == "qwen2")
    assert tok.eos_token == TEMPLATES[spec.template].eos and tok.padding_side == "left"
    assert eos_token_ids(model, tok) == tok.convert_tokens_to_ids(expected.split())


def test_eos_token_ids_merges_generation_config_and_tokenizer(chatml):
    class Model:
        generation_config = type("GenerationConfig", (), {"eos_token_id": None})()

    model = Model()
    assert eos_token_ids(model, chatml) == [chatml.eos_token_id]
    model.generation_config.eos_token_id = 7
    assert eos_token_ids(model, chatml) == [7, chatml.eos_token_id]
    model.generation_config.eos_token_id = [chatml.eos_token_id, 5, 5]
    assert eos_token_ids(model, chatml) == [chatml.eos_token_id, 5]
    assert eos_token_ids(torch.nn.Linear(1, 1), chatml) == [chatml.eos_token_id]  # no generation config
    assert (eos_argument([4]), eos_argument([4, 2]), eos_ids(4), eos_ids((4, 2))) == (4, [4, 2], [4], [4, 2])
    with pytest.raises(ValueError, match="eos_token_id is empty"):
        eos_ids([])


def test_checkpoint_seed_sets_weights_not_tokenizer(tmp_path):
    a = write_random_checkpoint(tmp_path / "a", shape="qwen2-tiny", seed=0, dtype="bfloat16")
    b = write_random_checkpoint(tmp_path / "b", shape="qwen2-tiny", seed=0)
    c = write_random_checkpoint(tmp_path / "c", shape="qwen2-tiny", seed=1)
    with safe_open(a / "model.safetensors", "pt") as fa, safe_open(b / "model.safetensors", "pt") as fb, \
            safe_open(c / "model.safetensors", "pt") as fc:
        name = "model.layers.0.mlp.up_proj.weight"
        assert fa.get_tensor(name).dtype == torch.bfloat16
        assert torch.equal(fa.get_tensor(name), fb.get_tensor(name).to(torch.bfloat16))
        assert not torch.equal(fb.get_tensor(name), fc.get_tensor(name))
    assert (b / "tokenizer.json").read_text() == (c / "tokenizer.json").read_text()
    with pytest.raises(FileExistsError, match="not an empty directory"):
        write_random_checkpoint(b, shape="qwen2-tiny")
    with pytest.raises(ValueError, match="unknown shape 'qwen9'"):
        write_random_checkpoint(tmp_path / "d", shape="qwen9")
    assert not (tmp_path / "d").exists()


def test_parameter_counts_of_the_named_shapes():
    counts = {name: parameter_counts(model_config(name)) for name in SHAPES}
    assert 2e5 < counts["qwen2-tiny"][0] < 2e6 and 2e5 < counts["llama3-tiny"][0] < 2e6
    assert 30e6 < counts["qwen2-50m"][0] < 100e6 and model_config("qwen2-50m").vocab_size == 32768
    # Qwen2.5-0.5B by hand: hidden 896, 24 layers, 14 query and 2 KV heads of 64, MLP 4864
    h, layers, kv, mlp = 896, 24, 2 * 64, 4864
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q, k, v with biases; o without
    per_layer = attention + 3 * h * mlp + 2 * h  # gate, up, down; two RMSNorms
    body = layers * per_layer + h  # + the final norm
    assert body == 357_898_112  # Qwen's "0.36B non-embedding parameters"
    total, without_embedding = counts["qwen2.5-0.5b"]
    assert without_embedding == body
    assert total == body + 32768 * h  # tied: the embedding counts once
    assert body + 151936 * h == 494_032_768  # with the real vocabulary: the published 0.49B
    config = model_config("qwen2.5-0.5b")
    assert (config.rope_parameters["rope_theta"], config.tie_word_embeddings, config.rms_norm_eps) == (1e6, True, 1e-6)


# ----------------------------------------------------------------------------- generation


def _scramble(model, seed=0):
    """Large random weights, so greedy output varies from step to step."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("shape", ["qwen2-tiny", "llama3-tiny"])
def test_kv_cache_stops_at_any_listed_eos(checkpoints, shape):
    model, tok = load_model_and_tokenizer(checkpoints[shape])
    model = _scramble(model)
    prompt = _ids(tok, tok.apply_chat_template([{"role": "user", "content": "12+3"}], add_generation_prompt=True,
                                               tokenize=False))
    kw = dict(max_new_tokens=12, temperature=0.0, top_p=1.0, pad_token_id=tok.pad_token_id)
    never = eos_token_ids(model, tok)
    free = KVCacheEngine().generate(model, [prompt], eos_token_id=never, **kw)[0]
    assert free.finish_reason == "length" and not set(never) & set(free.response_ids)
    # a token the model emits at step k (k > 0) and not before: listed with another id, it ends the row there
    k = next(i for i, t in enumerate(free.response_ids) if i > 0 and t not in free.response_ids[:i])
    stop = free.response_ids[k]
    for listed in ([never[0], stop], [stop, never[1]]):
        gen = KVCacheEngine().generate(model, [prompt], eos_token_id=listed, **kw)[0]
        assert gen.finish_reason == "eos"
        assert gen.response_ids == free.response_ids[:k + 1] and gen.response_ids[-1] == stop
        assert gen.logprobs == pytest.approx(free.logprobs[:k + 1], abs=1e-5)
        ids = torch.tensor([prompt])
        hf = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                            eos_token_id=listed, pad_token_id=tok.pad_token_id)
        assert hf[0, len(prompt):].tolist() == gen.response_ids  # HF's generate agrees on the list


def _biased_head(model, token_id, bias=30.0):
    """Every step prefers ``token_id``: a head of zero weights and one large bias."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = bias
    model.lm_head = head
    return model


@pytest.mark.parametrize("shape", ["qwen2-tiny", "llama3-tiny"])
@pytest.mark.parametrize("which", [0, 1])
def test_sampling_stops_at_either_checkpoint_eos(checkpoints, shape, which):
    """Through sample_trajectories: a model that always emits the second listed EOS
    (<|endoftext|> / <|eot_id|>) or the first stops at once, though only one is the
    tokenizer's eos_token."""
    model, tok = load_model_and_tokenizer(checkpoints[shape])
    target = eos_token_ids(model, tok)[which]
    model = _biased_head(model.eval(), target)
    problems = TASKS.get("addition")().sample_problems(3, 0)
    for temperature in (0.0, 1.0):
        trajs = sample_trajectories(KVCacheEngine(), model, tok, problems, max_new_tokens=8, temperature=temperature,
                                    generator=torch.Generator().manual_seed(0))
        assert [(t.response_ids, t.finish_reason) for t in trajs] == [([target], "eos")] * 3


class RecordingEngine(RolloutEngine):
    """Answers every turn with EOS at once, recording the ``eos_token_id`` it was given."""

    def __init__(self):
        self.eos_args = []

    def generate(self, model, prompts, *, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id,
                 generator=None, stop_sequences=()):
        self.eos_args.append(eos_token_id)
        first = eos_ids(eos_token_id)[0]
        return [Generation([first], [-0.1], "eos", [0.5]) for _ in prompts]


def test_multi_turn_passes_every_eos_id(checkpoints):
    from rlvr.config import EnvironmentConfig
    from rlvr.rollout.environment import build_environment
    from rlvr.verify.pool import InlineVerifier

    model, tok = load_model_and_tokenizer(checkpoints["qwen2-tiny"])
    task = TASKS.get("addition")()
    factory = build_environment(EnvironmentConfig(name="try_again", max_turns=2), task,
                                InlineVerifier(task).score_many)
    engine = RecordingEngine()
    trajs = sample_trajectories(engine, model, tok, task.sample_problems(2, 0), max_new_tokens=64, temperature=1.0,
                                environment=factory)
    assert engine.eos_args and all(arg == eos_token_ids(model, tok) for arg in engine.eos_args)
    assert len(eos_token_ids(model, tok)) == 2
    assert all(t.response_ids[0] == tok.eos_token_id for t in trajs)


# ----------------------------------------------------------------------------- command line


def test_cli_writes_a_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "out"), "--shape", "llama3-tiny", "--seed", "3", "--dtype", "bfloat16"]) == 0
    assert "llama3-tiny" in capsys.readouterr().out
    model, tok = load_model_and_tokenizer(tmp_path / "out")
    assert tok.eos_token == "<|eot_id|>" and model.config.model_type == "llama"
    capsys.readouterr()  # the loading progress bars
    with pytest.raises(SystemExit) as exit_info:  # OUT_DIR now holds files
        main([str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_bad_shape_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rlvr.models.random_checkpoint", str(tmp_path / "x"),
                             "--shape", "qwen9"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown shape 'qwen9'" in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


def test_plain_text_prefix_takes_leading_specials_only():
    """A tokenizer that wraps text as ``<s> text </s>`` gives plain prompts its ``<s>`` but
    never the ``</s>``: a prompt must not end the sequence."""
    from tokenizers.processors import TemplateProcessing

    from rlvr.rollout.trajectory import plain_text_prefix

    tok = build_bpe_tokenizer("chatml", 1000)
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A <|im_end|>", special_tokens=[("<|im_start|>", start), ("<|im_end|>", end)])
    assert tok("12")["input_ids"] == [start] + _ids(tok, "12") + [end]
    assert plain_text_prefix(tok) == [start]
    ids = render_prompts(tok, [Problem(id="p", prompt="12+3=", answer="15")])[0]
    assert ids == [start] + _ids(tok, "12+3=")
