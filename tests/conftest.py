"""Shared fixtures. `synth_shards` writes one tiny SynthTalk set per test session for everyone to read."""
from __future__ import annotations

from pathlib import Path

import pytest


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
    write_synthtalk(out, clips=10, seconds=1.0, shards=2, size=32, seed=1234, val_identities=1, identities=5)
    return out
