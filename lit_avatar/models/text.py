"""Wan2.1's prompt encoder: umT5 (transformers `UMT5EncoderModel`) and its tokenizer, from one local folder.

Prompts are encoded as Wan encodes them (diffusers `WanPipeline._get_t5_prompt_embeds`, the original
`T5EncoderModel` + model-side padding): the text is cleaned (ftfy, HTML entities, white
space), tokenized to `max_length` tokens (512 for Wan) with the end-of-sequence token, encoded with the
attention mask, and every position after the prompt's own tokens is set to zero. So a prompt is always
[max_length, d_model], and the DiT cross-attends to all of it, zeros included, as Wan does.

The folder is either a diffusers Wan pipeline folder (`text_encoder/` + `tokenizer/`) or one folder holding
both (`config.json` + weights + tokenizer files). transformers is imported inside the loader only.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import torch
from torch import nn

from lit_avatar.errors import UserError

WAN_TEXT_TOKENS = 512


def prompt_clean(text: str) -> str:
    """Wan's prompt cleaning: ftfy, HTML entities twice, runs of white space to one space."""
    import ftfy  # a dependency: diffusers' WanPipeline cleans with it when installed, so parity needs it

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def text_encoder_folders(path: str | Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a local umT5 folder; a one-line UserError when it is neither layout."""
    root = Path(path)
    if (root / "text_encoder" / "config.json").is_file() and (root / "tokenizer").is_dir():
        return root / "text_encoder", root / "tokenizer"
    if (root / "config.json").is_file():
        return root, root
    raise UserError(f"{root}: not a text encoder folder; expected config.json + weights + tokenizer files, or a "
                    "Wan pipeline folder with text_encoder/ and tokenizer/")


class UMT5TextEncoder(nn.Module):
    """Frozen umT5 encoder + tokenizer: `encode(texts) -> [B, max_length, d_model]`, Wan's padding.

    Args:
        path: local folder (see `text_encoder_folders`); nothing is downloaded.
        max_length: tokens per prompt (Wan: 512); longer prompts are truncated.
        dtype: weights' dtype ("float32", "bfloat16"); Wan runs umT5-XXL in bfloat16.
    """

    def __init__(self, path: str, max_length: int = WAN_TEXT_TOKENS, dtype: str = "float32") -> None:
        super().__init__()
        if max_length < 1:
            raise UserError(f"max_length {max_length}: expected a positive number of tokens (Wan: 512)")
        model_dir, tokenizer_dir = text_encoder_folders(path)
        from transformers import AutoTokenizer, UMT5EncoderModel

        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise UserError(f"dtype {dtype!r}: expected a torch dtype name such as float32 or bfloat16")
        try:
            self.model = UMT5EncoderModel.from_pretrained(model_dir, local_files_only=True, torch_dtype=torch_dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True,
                                                           trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: cannot load the umT5 text encoder ({str(err).splitlines()[0][:200]})") from None
        self.model.eval().requires_grad_(False)
        self.path, self.max_length, self.dtype = str(path), int(max_length), dtype

    @property
    def text_dim(self) -> int:
        return int(self.model.config.d_model)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings [B, max_length, d_model] in the weights' dtype; zeros after each prompt's tokens."""
        tokens = self.tokenizer([prompt_clean(t) for t in texts], padding="max_length", max_length=self.max_length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        device = next(self.model.parameters()).device
        mask = tokens.attention_mask.to(device)
        hidden = self.model(tokens.input_ids.to(device), mask).last_hidden_state
        return hidden.masked_fill(mask.unsqueeze(-1) == 0, 0.0)  # Wan keeps u[:len] and pads with zeros

    forward = encode
