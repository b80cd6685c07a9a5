"""Texts -> embeddings for the DiT, each unique prompt encoded once (memory, then the disk cache).

`PromptEncoder` is what training stages, generate and serve hold: it knows the encoder folder and its
identity (a hash of the folder's files, max_length and the padding convention) without loading umT5, and
loads the network only when a prompt is in neither cache. So a data set whose captions were encoded once
(`lit-avatar data precompute`, or an earlier run) trains without umT5-XXL in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from lit_avatar.data.atomic import write_json_atomic
from lit_avatar.errors import UserError
from lit_avatar.models.text import WAN_TEXT_TOKENS, UMT5TextEncoder, text_encoder_folders
from lit_avatar.prompts.cache import PromptCache

CACHE_ENV = "LIT_AVATAR_PROMPT_CACHE"
ENCODING = "wan-umt5-v1"  # cleaning + padding convention: part of the identity
MEMORY_PROMPTS = 64  # embeddings kept in memory (umT5-XXL: 8 MiB each in float32)
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def default_cache_dir() -> Path:
    """$LIT_AVATAR_PROMPT_CACHE, else ~/.cache/lit_avatar/prompts."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lit_avatar" / "prompts")


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _file_sha256(path: Path) -> str:
    key = _file_key(path)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _remembered_hashes(memo: Path | None) -> None:
    """Load hashes an earlier process stored (umT5-XXL is 11 GB: hashing it costs seconds each start). A
    damaged memo only costs the hashing: a warning names it, and this call rewrites it."""
    if memo is None or not memo.is_file():
        return
    try:
        entries = json.loads(memo.read_text())
        for path, size, mtime, sha in entries:
            _FILE_HASHES.setdefault((str(path), int(size), int(mtime)), str(sha))
    except (OSError, ValueError, TypeError):
        warnings.warn(f"{memo}: unreadable file-hash memo; hashing the text encoder's files again", stacklevel=2)


def folder_identity(path: str | Path, max_length: int, memo: Path | None = None) -> str:
    """sha256 over the encoder's and tokenizer's files (names and contents), max_length and ENCODING.

    Args:
        path: the encoder folder.
        max_length: tokens per prompt.
        memo: a JSON file remembering file hashes by (path, size, mtime) across processes.
    """
    _remembered_hashes(memo)
    digest = hashlib.sha256(f"{ENCODING}:{max_length}".encode())
    for folder in dict.fromkeys(text_encoder_folders(path)):
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(folder)}={_file_sha256(file)};".encode())
    if memo is not None:  # every hash known here, so encoders sharing a cache keep each other's
        write_json_atomic(memo, [[*key, sha] for key, sha in _FILE_HASHES.items()], indent=None)
    return digest.hexdigest()


class PromptEncoder:
    """Prompt texts -> [B, max_length, text_dim] embeddings, cached per (encoder identity, text).

    Args:
        path: local umT5 folder (a Wan pipeline folder with text_encoder/ + tokenizer/, or one folder).
        max_length: tokens per prompt (Wan: 512).
        dtype: umT5's weights dtype when it has to be loaded ("bfloat16" for umT5-XXL on a GPU).
        cache_dir: the embedding cache; None: $LIT_AVATAR_PROMPT_CACHE or ~/.cache/lit_avatar/prompts.
    """

    def __init__(self, path: str, max_length: int = WAN_TEXT_TOKENS, dtype: str = "float32",
                 cache_dir: str | None = None) -> None:
        text_encoder_folders(path)  # a wrong folder fails here, in one line, before any training starts
        self.path, self.max_length, self.dtype = str(path), int(max_length), dtype
        self.cache = PromptCache(cache_dir if cache_dir is not None else default_cache_dir())
        self._identity: str | None = None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._network: UMT5TextEncoder | None = None
        self.encoded = 0  # prompts that went through umT5 (not found in either cache)

    def use_cache(self, folder: str | None) -> None:
        """Read and write embeddings under `folder` (None: $LIT_AVATAR_PROMPT_CACHE or the default)."""
        self.cache = PromptCache(folder if folder is not None else default_cache_dir())

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = folder_identity(self.path, self.max_length, self.cache.folder / "file_hashes.json")
        return self._identity

    @property
    def text_dim(self) -> int:
        model_dir, _ = text_encoder_folders(self.path)
        try:
            return int(json.loads((model_dir / "config.json").read_text())["d_model"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{model_dir / 'config.json'}: expected a umT5 config with d_model") from None

    def network(self, device: str | torch.device = "cpu") -> UMT5TextEncoder:
        """umT5 itself, loaded on first use (only cache misses need it)."""
        if self._network is None:
            self._network = UMT5TextEncoder(self.path, self.max_length, self.dtype)
        return self._network.to(device)

    def __call__(self, texts: Sequence[str], device: str | torch.device = "cpu") -> torch.Tensor:
        """Embeddings [len(texts), max_length, text_dim] (float32) on `device`."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("PromptEncoder expects a sequence of strings")
        found = {t: self._memory.get(t) for t in dict.fromkeys(texts)}
        for text in found:
            if found[text] is None:
                found[text] = self.cache.get(self.identity, text)
        missing = [t for t, e in found.items() if e is None]
        if missing:
            encoded = self.network(device).encode(missing).cpu()
            for text, embedding in zip(missing, encoded):
                found[text] = embedding.clone()
                self.cache.put(self.identity, text, found[text])
            self.encoded += len(missing)
        for text, embedding in found.items():
            self._memory[text] = embedding
            self._memory.move_to_end(text)
        while len(self._memory) > MEMORY_PROMPTS:
            self._memory.popitem(last=False)
        return torch.stack([found[t] for t in texts]).to(device=device, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"PromptEncoder(path={self.path!r}, max_length={self.max_length}, dtype={self.dtype!r})"
