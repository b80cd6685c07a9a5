"""Prompt embeddings on disk: one safetensors file per (encoder identity, prompt text).

Keyed by both, so a different encoder (another checkpoint, another max_length) never reads another's
embeddings. Each file also stores its text and identity as metadata, which `get` checks, so a file put in
the wrong place (or a hash collision) is a miss, not a wrong prompt. Files are written atomically: ranks and
serve workers may fill one cache at once. A cache file is data (safetensors: no code).
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from lit_avatar.data.atomic import write_bytes_atomic


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class PromptCache:
    """Embeddings [L, D] by (identity, text) under `folder/<identity[:16]>/<sha256(text)>.safetensors`.

    Args:
        folder: the cache folder (created on the first write).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, identity: str, text: str) -> Path:
        return self.folder / identity[:16] / f"{text_key(text)}.safetensors"

    def get(self, identity: str, text: str) -> torch.Tensor | None:
        """The stored embedding, or None (missing, unreadable, or stored for another text or encoder)."""
        try:
            data = self.path(identity, text).read_bytes()
            tensors = load(data)
        except (OSError, SafetensorError):
            return None
        meta = _metadata(data)
        if meta.get("text") != text or meta.get("encoder") != identity or set(tensors) != {"text"}:
            return None
        return tensors["text"]

    def put(self, identity: str, text: str, embedding: torch.Tensor) -> None:
        """Store one prompt's embedding [L, D] (atomically: a reader sees the whole file or none)."""
        data = save({"text": embedding.detach().cpu().contiguous()}, metadata={"text": text, "encoder": identity})
        write_bytes_atomic(self.path(identity, text), data)


def _metadata(data: bytes) -> dict:
    """The `__metadata__` of safetensors bytes that `load` already accepted (so the header is well formed)."""
    size = struct.unpack("<Q", data[:8])[0]
    meta = json.loads(data[8:8 + size]).get("__metadata__")
    return meta if isinstance(meta, dict) else {}
