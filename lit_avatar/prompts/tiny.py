"""A small random-weight umT5 with a word-level tokenizer over a given vocabulary, written as a local folder.

Tests and SynthTalk use it where Wan uses umT5-XXL: the same classes (transformers `UMT5EncoderModel`,
a fast tokenizer with `</s>` appended and `<pad>` padding), loaded by the same code, at a size a CPU trains
against in minutes. Nothing is downloaded: the tokenizer is built from `words`, the weights from `seed`.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5


def write_tiny_text_encoder(folder: str | Path, words: Iterable[str], d_model: int = 16, num_layers: int = 2,
                            num_heads: int = 2, d_ff: int = 32, seed: int = 0, d_kv: int | None = None) -> Path:
    """Write config.json, model.safetensors and tokenizer files into `folder`; returns it.

    Args:
        folder: where to write (created).
        words: the vocabulary (lower-cased); anything else becomes <unk>.
        d_model: embedding width (the DiT's `text_dim`).
        num_layers, num_heads, d_ff: encoder size.
        seed: weights' seed (same seed, same torch: same bytes).
        d_kv: width of each attention head (default d_model // num_heads); small, it keeps an encoder of
            umT5-XXL's output width (4096) a few MB.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {token: i for i, token in enumerate(dict.fromkeys([*SPECIAL, *(w.lower() for w in words)]))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")
    config = UMT5Config(vocab_size=len(vocab), d_model=d_model, d_kv=d_kv or d_model // num_heads, d_ff=d_ff,
                        num_layers=num_layers, num_heads=num_heads, relative_attention_num_buckets=8,
                        relative_attention_max_distance=16, feed_forward_proj="gated-gelu", pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder
