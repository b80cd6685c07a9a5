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
import warnings
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
        self.damaged = 0  # files found but not usable (unreadable, or another text's): re-encoded, then replaced

    def path(self, identity: str, text: str) -> Path:
        return self.folder / identity[:16] / f"{text_key(text)}.safetensors"

    def get(self, identity: str, text: str) -> torch.Tensor | None:
        """The stored embedding, or None when there is none; a file that is there but unreadable or stored for
        another text or encoder is also None, counted in `damaged` with a warning naming it (the caller encodes
        the prompt again and `put` replaces the file)."""
        path = self.path(identity, text)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            tensors = load(data)
            meta = _metadata(data)
        except (SafetensorError, ValueError):
            tensors, meta = {}, {}
        if meta.get("text") != text or meta.get("encoder") != identity or set(tensors) != {"text"}:
            self.damaged += 1
            warnings.warn(f"{path}: not this prompt's embedding (damaged or misplaced); encoding it again",
                          stacklevel=2)
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
