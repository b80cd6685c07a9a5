"""Prompt embeddings: Wan's encoding (parity with diffusers' WanPipeline), the disk cache, the record slot."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lit_avatar.checkpoint import describe, instantiate
from lit_avatar.errors import UserError
from lit_avatar.models.text import UMT5TextEncoder, text_encoder_folders
from lit_avatar.prompts import PromptCache, PromptEncoder, write_tiny_text_encoder
from lit_avatar.prompts.encoder import folder_identity

PROMPTS = ["a woman  talking, smiling", "red hair &amp; blue background", "", "mouth wide open " * 5]


def test_embeddings_equal_diffusers_wan_pipeline_prompt_embeds(tiny_text_encoder):
    from diffusers.pipelines.wan.pipeline_wan import WanPipeline

    encoder = UMT5TextEncoder(str(tiny_text_encoder), max_length=12)
    ours = encoder.encode(PROMPTS)
    pipe = SimpleNamespace(tokenizer=encoder.tokenizer, text_encoder=encoder.model,
                           _execution_device=torch.device("cpu"))
    reference = WanPipeline._get_t5_prompt_embeds(pipe, PROMPTS, max_sequence_length=12, device=torch.device("cpu"))
    assert ours.shape == (4, 12, 16)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    lengths = (ours.abs().sum(-1) > 0).sum(1).tolist()
    assert lengths == [6, 6, 1, 12]  # words and commas + </s>; "" is </s> alone; the long prompt is truncated
    assert not torch.signbit(ours[0, 6:]).any()  # padding is +0, as diffusers' new_zeros


def test_each_prompt_is_encoded_once_across_encoders_sharing_a_cache(tiny_text_encoder, tmp_path):
    first = PromptEncoder(str(tiny_text_encoder), max_length=12, cache_dir=str(tmp_path))
    out = first(PROMPTS + PROMPTS[:1])
    assert first.encoded == 4 and out.shape == (5, 12, 16) and torch.equal(out[0], out[4])
    second = PromptEncoder(str(tiny_text_encoder), max_length=12, cache_dir=str(tmp_path))
    again = second(PROMPTS[::-1])
    assert second.encoded == 0 and second._network is None  # umT5 never loaded
    assert torch.equal(again, out[:4].flip(0))
    direct = UMT5TextEncoder(str(tiny_text_encoder), max_length=12).encode(PROMPTS)
    assert torch.equal(out[:4], direct)


def test_the_cache_key_is_the_encoder_identity_and_the_text(tiny_text_encoder, tmp_path):
    other = write_tiny_text_encoder(tmp_path / "other", ["a", "woman"], d_model=16, seed=1)
    ids = {folder_identity(tiny_text_encoder, 12), folder_identity(tiny_text_encoder, 13), folder_identity(other, 12)}
    assert len(ids) == 3
    cache = PromptCache(tmp_path / "cache")
    identity = folder_identity(tiny_text_encoder, 12)
    cache.put(identity, "a woman", torch.ones(12, 16))
    assert torch.equal(cache.get(identity, "a woman"), torch.ones(12, 16))
    assert cache.get(identity, "a man") is None and cache.get(folder_identity(other, 12), "a woman") is None
    assert cache.damaged == 0  # a prompt never stored is a plain miss
    # a file moved under another text's name is a miss, not that text's embedding, and it is said
    cache.path(identity, "a man").write_bytes(cache.path(identity, "a woman").read_bytes())
    with pytest.warns(UserWarning, match="not this prompt's embedding"):
        assert cache.get(identity, "a man") is None
    cache.path(identity, "a man").write_bytes(b"not safetensors")
    with pytest.warns(UserWarning, match="damaged or misplaced"):
        assert cache.get(identity, "a man") is None
    assert cache.damaged == 2


def test_the_record_names_the_text_encoder_and_rebuilds_it(tiny_text_encoder):
    encoder = PromptEncoder(str(tiny_text_encoder), max_length=12)
    spec = describe(encoder)
    assert spec == {"class_path": "lit_avatar.prompts.encoder.PromptEncoder",
                    "init_args": {"path": str(tiny_text_encoder), "max_length": 12, "dtype": "float32"}}
    rebuilt = instantiate(json.loads(json.dumps(spec)), "ckpt: lit_avatar.text_encoder")
    assert rebuilt.identity == encoder.identity and rebuilt.text_dim == 16
    bad = {**spec, "init_args": {**spec["init_args"], "cache_dir": "/tmp/x"}}
    with pytest.raises(UserError, match=r"text_encoder.init_args.cache_dir: not an argument a record may give"):
        instantiate(bad, "ckpt: lit_avatar.text_encoder")


def test_a_folder_without_an_encoder_is_one_line(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path}: not a text encoder folder; expected config.json"):
        text_encoder_folders(tmp_path)
    with pytest.raises(UserError, match="not a text encoder folder"):
        PromptEncoder(str(tmp_path))


def test_a_wan_pipeline_folder_layout_is_read(tiny_text_encoder, tmp_path):
    import shutil

    root = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    shutil.copytree(tiny_text_encoder, root / "text_encoder")
    shutil.copytree(tiny_text_encoder, root / "tokenizer")
    assert text_encoder_folders(root) == (root / "text_encoder", root / "tokenizer")
    assert torch.equal(UMT5TextEncoder(str(root), 12).encode(PROMPTS),
                       UMT5TextEncoder(str(tiny_text_encoder), 12).encode(PROMPTS))


def test_file_hashes_are_remembered_across_processes(tiny_text_encoder, tmp_path, monkeypatch):
    from lit_avatar.prompts import encoder as module

    memo = tmp_path / "file_hashes.json"
    first = folder_identity(tiny_text_encoder, 12, memo)
    monkeypatch.setattr(module, "_FILE_HASHES", {})  # a new process
    hashed = []
    real = module.hashlib.sha256
    monkeypatch.setattr(module.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    assert folder_identity(tiny_text_encoder, 12, memo) == first
    assert len(hashed) == 1  # the identity's own digest; no file read again


def test_a_damaged_hash_memo_is_said_and_rewritten(tiny_text_encoder, tmp_path, monkeypatch):
    from lit_avatar.prompts import encoder as module

    memo = tmp_path / "file_hashes.json"
    memo.write_text("{not json")
    monkeypatch.setattr(module, "_FILE_HASHES", {})
    with pytest.warns(UserWarning, match="unreadable file-hash memo"):
        identity = folder_identity(tiny_text_encoder, 12, memo)
    assert identity == folder_identity(tiny_text_encoder, 12) and len(json.loads(memo.read_text())) > 0
