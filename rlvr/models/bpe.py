"""Byte-level BPE tokenizers trained in code, laid out like Qwen2.5's and Llama 3's.

The character tokenizer (``rlvr.models.tokenizer``) is right for tiny arithmetic models, but
a real checkpoint's tokenizer differs in ways that matter to the rollout and training code:
merges (a token is several characters, and re-tokenizing generated text can split it
differently), special tokens at the end of the vocabulary, a chat template that opens the
assistant turn with a header of several tokens, a chat EOS that is not the end-of-text token,
and no unknown token (every byte has one). ``build_bpe_tokenizer`` makes such a tokenizer
without a download: GPT-2's byte-level BPE (256 byte symbols, the pre-tokenizer regex of
Qwen2 or Llama 3) trained by ``tokenizers.trainers.BpeTrainer`` on a corpus generated from a
seed (prose from an English word list and a synthetic lexicon, arithmetic with
``<think>``/``<answer>`` tags, Python-like code, some non-ASCII text).

Two layouts (``TEMPLATES``):

* ``"chatml"`` (Qwen2 / Qwen2.5): ``<|endoftext|>`` (pad; no BOS), ``<|im_start|>``,
  ``<|im_end|>`` (the chat EOS); Qwen2.5's chat template without tools, default system
  message included; digits are single tokens (Qwen's pre-tokenizer).
* ``"llama3"`` (Llama 3 Instruct): ``<|begin_of_text|>`` (BOS, added by the template and by
  ``add_special_tokens=True``), ``<|end_of_text|>``, ``<|finetune_right_pad_id|>`` (pad, as
  Llama 3.1), ``<|start_header_id|>``, ``<|end_header_id|>``, ``<|eot_id|>`` (the chat EOS);
  Llama-3-Instruct's chat template; digits in groups of up to three.

``decode(encode(t)) == t`` for any text with "llama3", and for any NFC-normalized text with
"chatml": like Qwen2's tokenizer.json it normalizes to NFC first (transformers loads a
``qwen2`` checkpoint's tokenizer through ``Qwen2Tokenizer``, which does so whatever the file
says, so the tokenizer in memory and the one saved and loaded back agree).

Training a 32768-token vocabulary takes about 2 s on 2 cores (65536: about 4 s); the trained
merges are cached per (layout, size, seed), and every call returns a fresh tokenizer object.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Literal

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

Template = Literal["chatml", "llama3"]

BYTE_ALPHABET = 256  # byte-level BPE starts from one symbol per byte
MAX_VOCAB_SIZE = 65536  # the largest size the generated corpus reaches (tests check it)

# The pre-tokenizer regexes of the real tokenizer.json files: Qwen2 splits digits one by one,
# Llama 3 in groups of up to three.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2.5-Instruct's template without the tool-calling branches.
_CHATML_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Meta-Llama-3-8B-Instruct's template, verbatim.
_LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ChatLayout:
    """The special tokens (in id order, after the merges) and chat template of one family.

    ``eos`` is the chat EOS (the tokenizer's ``eos_token``); ``generation_eos`` are the ids a
    checkpoint's generation_config.json lists, in the order the real checkpoints list them."""

    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    generation_eos: tuple[str, ...]
    chat_template: str
    split_regex: str
    nfc: bool  # NFC-normalize text before splitting it (Qwen2's tokenizer.json does, Llama 3's does not)


TEMPLATES: dict[str, ChatLayout] = {
    "chatml": ChatLayout(
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>",
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        chat_template=_CHATML_TEMPLATE, split_regex=_QWEN2_SPLIT, nfc=True),
    "llama3": ChatLayout(
        specials=("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"),
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
        generation_eos=("<|end_of_text|>", "<|eot_id|>"),
        chat_template=_LLAMA3_TEMPLATE, split_regex=_LLAMA3_SPLIT, nfc=False),
}


def vocab_size_range(template: Template) -> tuple[int, int]:
    """The smallest (the byte alphabet and the specials, no merges) and largest vocabulary
    ``build_bpe_tokenizer`` makes for ``template``."""
    return BYTE_ALPHABET + len(_layout(template).specials), MAX_VOCAB_SIZE


def build_bpe_tokenizer(template: Template = "chatml", vocab_size: int = 4096, seed: int = 0
                        ) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of exactly ``vocab_size`` tokens (``len(tokenizer)``, the
    specials included) trained on a corpus generated from ``seed``, with ``template``'s
    special tokens (the last ids), chat template, eos/pad/bos and left padding.

    ValueError when ``vocab_size`` is outside ``vocab_size_range(template)``."""
    layout = _layout(template)
    low, high = vocab_size_range(template)
    if not low <= vocab_size <= high:
        raise ValueError(f"vocab_size {vocab_size} is outside the sizes a {template!r} BPE tokenizer can have "
                         f"({low}..{high}: the 256 bytes and {len(layout.specials)} special tokens, up to what the "
                         "generated corpus yields)")
    core = Tokenizer.from_str(_trained(layout.split_regex, vocab_size - len(layout.specials), seed))
    if layout.nfc:
        core.normalizer = normalizers.NFC()
    core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in layout.specials])
    if layout.bos is not None:  # Llama 3 puts BOS in front when add_special_tokens=True
        bos_id = core.token_to_id(layout.bos)
        core.post_processor = processors.TemplateProcessing(
            single=f"{layout.bos} $A", pair=f"{layout.bos} $A {layout.bos}:1 $B:1",
            special_tokens=[(layout.bos, bos_id)])
    if core.get_vocab_size(with_added_tokens=True) != vocab_size:  # the corpus ran out of merges
        raise ValueError(f"the generated corpus yields {core.get_vocab_size(with_added_tokens=True)} tokens, "
                         f"not vocab_size {vocab_size}; use at most {MAX_VOCAB_SIZE}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=layout.bos,
        eos_token=layout.eos,
        pad_token=layout.pad,
        unk_token=None,  # written to tokenizer_config.json, or Qwen2Tokenizer would make <|endoftext|> the unk
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=131072,
    )
    tokenizer.chat_template = layout.chat_template
    return tokenizer


def _layout(template: str) -> ChatLayout:
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {template!r}")
    return TEMPLATES[template]


@functools.lru_cache(maxsize=8)
def _trained(split_regex: str, size: int, seed: int) -> str:
    """The trained tokenizer (no specials yet) of ``size`` tokens as tokenizer.json text."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(_corpus(seed, size), trainer)
    return core.to_str()


# ----------------------------------------------------------------------------- the corpus

_ENGLISH_TEXT = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or had "
    "by word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down side "
    "been now find any new work part take get place made live where after back little only round man year came "
    "show every good me give our under name very through just form sentence great think say help low line differ "
    "turn cause much mean before move right boy old too same tell does set three want air well also play small end "
    "put home read hand port large spell add even land here must big high such follow act why ask men change went "
    "light kind off need house picture try us again animal point mother world near build self earth father head "
    "stand own page should country found answer school grow study still learn plant cover food sun four between "
    "state keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late "
    "run while press close night real life few north open seem together next white children begin got walk example "
    "ease paper group always music those both mark often letter until mile river car feet care second book carry "
    "took science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face wood "
    "main enough plain girl usual young ready above ever red list though feel talk bird soon body dog family direct "
    "leave song measure door product black short numeral class wind question happen complete ship area half rock "
    "order fire south problem piece told knew pass since top whole king space heard best hour better true during "
    "hundred five remember step early hold west ground interest reach fast verb sing listen six table travel less "
    "morning ten simple several vowel toward war lay against pattern slow center love person money serve appear "
    "road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark machine "
    "note wait plan figure star box noun field rest correct able pound done beauty drive stood contain front teach "
    "week final gave green quick develop ocean warm free minute strong special mind behind clear tail produce fact "
    "street inch multiply nothing course stay wheel full force blue object decide surface deep moon island foot "
    "system busy test record boat common gold possible plane dry wonder laugh thousand ago ran check game shape "
    "equal hot miss brought heat snow bring yes distant fill east paint language among sum total digit carry "
    "subtract divide remainder result therefore so compute solve value equation because verify assistant user "
    "reasoning answer think"
)
_ENGLISH = list(dict.fromkeys(_ENGLISH_TEXT.split()))  # a few words appear twice in the text
_NON_ASCII = ("café", "naïve", "über", "déjà", "señor", "façade", "Ω", "π", "α", "β", "λ", "∑", "→", "≤", "≥", "×",
              "÷", "°", "€", "数学", "答案", "思考", "日本語", "한국어", "русский", "ελληνικά", "😀", "🚀", "✓")
_ONSETS = ("", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "bl",
           "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "pl", "pr", "sc", "sh", "sk", "sl", "sm", "sn",
           "sp", "st", "str", "sw", "th", "tr", "wh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oa", "oo", "ou", "y")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "nt", "st", "ck", "ng", "rk", "x", "th", "sh")
_SUFFIXES = ("", "", "", "", "s", "ed", "ing", "er", "ly", "tion", "ness", "able")


def _corpus(seed: int, size: int) -> list[str]:
    """Documents for BPE training towards ``size`` tokens, from ``seed``: Zipf-distributed
    prose over the English list then a synthetic lexicon of one word per token wanted
    (each at least once, so the trainer never runs out of merges), arithmetic with
    reasoning tags, and code. Smaller vocabularies get a proportionally smaller corpus."""
    rng = random.Random(seed)
    lexicon_words = size
    synthetic: set[str] = set()
    while len(synthetic) < lexicon_words:
        stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                       for _ in range(rng.randint(1, 4)))
        synthetic.add(stem + rng.choice(_SUFFIXES))
    invented = sorted(synthetic - set(_ENGLISH))
    rng.shuffle(invented)  # a seed-dependent frequency order
    lexicon = _ENGLISH + invented
    zipf = [1.0 / (rank + 1) for rank in range(len(lexicon))]
    docs = [" ".join(lexicon[i:i + 16]) for i in range(0, len(lexicon), 16)]
    words = rng.choices(lexicon, weights=zipf, k=10 * lexicon_words)
    for start in range(0, len(words), 12):
        sentence = words[start:start + 12]
        if rng.random() < 0.05:
            sentence.insert(rng.randrange(len(sentence) + 1), rng.choice(_NON_ASCII))
        sentence[0] = sentence[0].capitalize()
        docs.append(" ".join(sentence) + rng.choice((".", ".", ".", ",", "?", "!", ":", ";")) + rng.choice(
            (" ", " ", "\n", "\n\n")))
    docs += [_arithmetic(rng) for _ in range(lexicon_words // 2)]
    docs += [_code(rng, lexicon) for _ in range(lexicon_words // 12)]
    return docs


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 10 ** rng.randint(1, 5)), rng.randint(0, 10 ** rng.randint(1, 4))
    op = rng.choice("+-*")
    value = a + b if op == "+" else a - b if op == "-" else a * b
    question = rng.choice((f"{a}{op}{b}", f"{a} {op} {b} =", f"What is {a} {op} {b}?", f"Compute {a}{op}{b}."))
    steps = f"{a} {op} {b} = {value}" if rng.random() < 0.5 else (
        f"Step 1: {a} {op} {b}.\nStep 2: the result is {value}.")
    # the role names and system messages chat templates write, so they merge as in a real vocabulary
    system = rng.choice(("You are a helpful assistant.", "You are Qwen, created by Alibaba Cloud. You are a helpful "
                                                          "assistant."))
    return (f"system\n{system}\nuser\n{question}\nassistant\n"
            f"<think>\n{steps}\n</think>\n<answer>{value}</answer>\n")


def _code(rng: random.Random, lexicon: list[str]) -> str:
    name, arg, other = (rng.choice(lexicon[:5000]).lower() for _ in range(3))
    n = rng.randint(0, 999)
    return (f"def {name}_{arg}({arg}, {other}={n}):\n"
            f"    \"\"\"Return the {name} of {arg}.\"\"\"\n"
            f"    result = []\n"
            f"    for i in range(len({arg})):\n"
            f"        if {arg}[i] > {other}:\n"
            f"            result.append({arg}[i] * {rng.randint(2, 9)})\n"
            f"    return {{'{name}': result, \"n\": {n}}}\n\n")
