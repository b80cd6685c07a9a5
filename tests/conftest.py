"""Shared fixtures. `synth_shards` writes one tiny SynthTalk set per test session for everyone to read.
Tests marked `requires_cuda` run where torch sees a GPU (`pytest -m requires_cuda`) and are skipped elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# jsonargparse warns of a deprecation once per process, usually first from inside Lightning (ignored); every
# time, our own calls of it meet pyproject's error filter whatever ran before
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "all")


def pytest_collection_modifyitems(config, items) -> None:
    needs_gpu = [item for item in items if item.get_closest_marker("requires_cuda")]
    if not needs_gpu:
        return  # torch is imported only when a GPU test was collected
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="requires_cuda: torch.cuda.is_available() is False on this machine")
    for item in needs_gpu:
        item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (tiny models: extra threads only spin), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory) -> Path:
    """A tiny SynthTalk set (about 1 s to make), shared by the whole session; treat it as read-only.

    Layout: train-000000.tar, train-000001.tar (8 clips, 4 identities), val-000000.tar (2 clips of a 5th,
    held-out identity) and manifest.json; clips are 1 s (25 frames, 16000 samples) at 32x32 px.
    Glob for loaders: str(path / "train-*.tar"), str(path / "val-*.tar").
    """
    from data_tools.synth import write_synthtalk

    out = tmp_path_factory.mktemp("synthtalk")
    # without captions: tests that caption shards themselves (tests/captioned.py) start from uncaptioned ones
    write_synthtalk(out, clips=10, seconds=1.0, shards=2, size=32, seed=1234, val_identities=1, identities=5,
                    captions=False)
    return out


PROMPT_WORDS = ("a woman man talking smiling red green blue hair skin background mouth open closed wide in "
                "studio").split()


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory) -> Path:
    """A tiny random umT5 (d_model 16, the tiny DiT's text_dim) with a word-level tokenizer over PROMPT_WORDS."""
    from lit_avatar.prompts import write_tiny_text_encoder

    return write_tiny_text_encoder(tmp_path_factory.mktemp("umt5") / "text_encoder", PROMPT_WORDS, d_model=16)


@pytest.fixture(scope="session")
def wan_width_text_encoder(tmp_path_factory) -> Path:
    """A tiny random umT5 of umT5-XXL's output width (d_model 4096, the 1.3B DiT's text_dim; 1.5 MB: one layer,
    narrow heads), for building the 1.3B recipes with their text encoder."""
    from lit_avatar.prompts import write_tiny_text_encoder

    return write_tiny_text_encoder(tmp_path_factory.mktemp("umt5_4096") / "text_encoder", PROMPT_WORDS,
                                   d_model=4096, num_layers=1, num_heads=2, d_kv=4, d_ff=8)
