"""Prompts: text embeddings for the DiT's cross-attention, encoded once per unique prompt.

    cache.py    PromptCache: embeddings on disk, one safetensors file per (encoder identity, text)
    encoder.py  PromptEncoder: texts -> embeddings through the cache; loads umT5 only on a miss
    tiny.py     write_tiny_text_encoder: a small random umT5 + word-level tokenizer (tests, SynthTalk)
"""
from __future__ import annotations

from lit_avatar.prompts.cache import PromptCache
from lit_avatar.prompts.encoder import PromptEncoder, default_cache_dir
from lit_avatar.prompts.tiny import write_tiny_text_encoder

__all__ = ["PromptCache", "PromptEncoder", "default_cache_dir", "write_tiny_text_encoder"]
