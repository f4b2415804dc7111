"""Models and tokenizers: tiny ones built offline, or any local Hugging Face checkpoint."""

from rlvr.models.loading import build_tiny_model, load_model_and_tokenizer
from rlvr.models.tokenizer import build_char_tokenizer

__all__ = ["build_char_tokenizer", "build_tiny_model", "load_model_and_tokenizer"]
