"""A character-level tokenizer built in code, saved and loaded as a Hugging Face tokenizer.

Tiny models learn arithmetic far more easily when every digit is its own token, and a
character vocabulary needs no training data or download. The result is a
`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained(dir)` loads it like any
other checkpoint's tokenizer, chat template included.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|end|>", "<|unk|>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, USER, ASSISTANT, SYSTEM]

# One turn per message, the assistant's turn closed by EOS so generation stops there.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + SYSTEM + "{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% else %}" + ASSISTANT + "{{ message['content'] }}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)

DEFAULT_CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_char_tokenizer(characters: str = DEFAULT_CHARACTERS) -> PreTrainedTokenizerFast:
    """Return a fast tokenizer with one token per character plus chat/pad/eos specials.

    Ids 0..6 are the special tokens (pad=0), then the characters in the given order.
    Characters outside the vocabulary map to ``<|unk|>``.
    """
    if len(set(characters)) != len(characters):
        raise ValueError("tokenizer characters must be unique")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in characters:
        vocab[ch] = len(vocab)
    # BPE with no merges splits a string into characters; no pre-tokenizer keeps spaces.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=True))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
