"""`lit-avatar data build --engine ray` (one local Ray cluster for the module, 2 CPUs), `--part I/N` +
`data merge`: the shards (sha256) and the manifest (apart from timings) equal the local one-shot build, also
after a killed driver, a killed worker or a build in parts; precompute in Ray actors equals the local one."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_tools.build import build
from data_tools.parts import merge
from data_tools.toy_sources import write_talking_video
from lit_avatar.errors import UserError

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _tar_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def _manifest(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("last_run_seconds")  # the one timing
    return manifest


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    """Toy sources at 25/30/24 fps in mp4/mkv/mov, a silent one and a broken (truncated) one."""
    root = tmp_path_factory.mktemp("cluster_raw")
    src = root / "src"
    for name, kw in {"alice/talk25.mp4": dict(fps=25), "alice/talk30.mkv": dict(fps=30, seed=1),
                     "bob/portrait24.mov": dict(fps=24, seed=2), "carol/silent.mp4": dict(fps=25, audio_level=0.0),
                     "dave/cut.mp4": dict(fps=25, seed=3)}.items():
        write_talking_video(src / name, 2.2, width=64, height=48, **kw)
    data = (src / "dave/cut.mp4").read_bytes()
    (src / "dave/cut.mp4").write_bytes(data[: len(data) // 2])
    return {"root": root, "src": src}


def _args(raw: dict, out: Path, *extra: str) -> list[str]:
    # 128 px: x264 output is byte-reproducible at this size (see tests/test_build.py)
    return ["--src", str(raw["src"]), "--out", str(out), "--size", "128", "--clip-seconds", "1", "--no-face",
            "--sources-per-job", "1", "--val-fraction", "0.3", "--seed", "8", "--no-progress", *extra]


@pytest.fixture(scope="module")
def local(raw) -> Path:
    """The local one-shot build every other build is compared with."""
    out = raw["root"] / "local"
    build(_args(raw, out))
    return out


@pytest.fixture(scope="module")
def cluster(raw):
    """One local Ray cluster for the module; its workers run tests/cluster_hooks.py (the armed kill)."""
    kill = raw["root"] / "kill-one-worker"
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": {"PYTHONPATH": path, "LIT_AVATAR_TEST_KILL_FILE": str(kill)},
                          "worker_process_setup_hook": "cluster_hooks.setup"})
    yield {"kill": kill, "address": ray.get_runtime_context().gcs_address}
    ray.shutdown()


def test_ray_build_equals_local_build(raw, local, cluster):
    out = raw["root"] / "ray"
    build(_args(raw, out, "--engine", "ray", "--workers", "2"))
    assert _tar_hashes(out) == _tar_hashes(local) and len(_tar_hashes(local)) == 3
    assert _manifest(out) == _manifest(local)
    reasons = {Path(f["file"]).name: f["reason"] for f in _manifest(out)["rejected_files"]}
    assert reasons == {"cut.mp4": "broken", "silent.mp4": "silent"}


def test_ray_build_with_captions_equals_local_build_with_captions(raw, local, cluster):
    """Captions travel with the sources into the jobs: the Ray build's shards equal the local ones byte for byte,
    and differ from the uncaptioned build only in the shards of captioned videos."""
    captions = raw["root"] / "captions.csv"
    captions.write_text('id,text\ntalk25,a woman talking\nportrait24,"a man, smiling"\n')
    here, there = raw["root"] / "local_captions", raw["root"] / "ray_captions"
    build(_args(raw, here, "--captions", str(captions)))
    build(_args(raw, there, "--captions", str(captions), "--engine", "ray", "--workers", "2"))
    assert _tar_hashes(there) == _tar_hashes(here) and _manifest(there) == _manifest(here)
    changed = {name for name, digest in _tar_hashes(here).items() if _tar_hashes(local)[name] != digest}
    assert len(changed) == 2 and _manifest(here)["captions"]["sources_captioned"] == 2


def test_worker_killed_mid_source_is_retried(raw, local, cluster):
    cluster["kill"].write_text("armed")
    out = raw["root"] / "ray_killed_worker"
    build(_args(raw, out, "--engine", "ray", "--workers", "2"))
    assert not cluster["kill"].exists(), "no worker took the kill"
    assert _tar_hashes(out) == _tar_hashes(local)
    assert _manifest(out) == _manifest(local)
    assert not list(out.glob(".*tmp"))  # the dead worker's half-written shard is gone


def test_job_whose_worker_always_dies_is_recorded(raw, local, cluster):
    always = Path(f"{cluster['kill']}.always")
    always.write_text("portrait24")
    try:
        out = raw["root"] / "ray_always_dies"
        manifest = build(_args(raw, out, "--engine", "ray", "--workers", "2"))
    finally:
        always.unlink()
    failed = {Path(f["file"]).name: (f["reason"], f["detail"]) for f in manifest["rejected_files"]}
    assert failed["portrait24.mov"][0] == "error" and "failed 4 times" in failed["portrait24.mov"][1]
    # bob's shard is missing; every other shard is the local build's
    missing = set(_tar_hashes(local)) - set(_tar_hashes(out))
    assert len(missing) == 1 and _tar_hashes(out) == {k: v for k, v in _tar_hashes(local).items() if k not in missing}
    assert not list(out.glob(".*tmp"))


# The driver of a Ray build that dies (no cleanup) once its second job is done.
KILLED_DRIVER = """
import os, sys
from data_tools import build as b

progress, finished = b._progress, []

def dying_progress(total, enabled):
    bar = progress(total, enabled)
    update = bar.update
    def update_or_die(n=1):
        update(n)
        if n:
            finished.append(n)
        if len(finished) == 2:
            os._exit(77)
    bar.update = update_or_die
    return bar

b._progress = dying_progress
sys.exit(b.main(sys.argv[1:]))
"""


def test_driver_killed_and_restarted_gives_the_same_build(raw, local, cluster):
    out = raw["root"] / "ray_killed_driver"
    argv = _args(raw, out, "--engine", "ray", "--workers", "1", "--ray-address", cluster["address"])
    killed = subprocess.run([sys.executable, "-c", KILLED_DRIVER, *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=240)
    assert killed.returncode == 77, killed.stderr[-2000:]
    assert not (out / "manifest.json").exists()
    assert len(list(out.glob("*.done.json"))) in (2, 3)  # a third job may finish before the driver's death
    build(_args(raw, out, "--engine", "ray", "--workers", "2"))  # the same command, on the same cluster
    assert _tar_hashes(out) == _tar_hashes(local)
    assert _manifest(out) == _manifest(local)


def test_parts_and_merge_equal_the_one_shot_build(raw, local):
    out = raw["root"] / "parts"
    with pytest.raises(UserError, match="2 of 5 jobs are not done"):
        build(_args(raw, out, "--part", "0/2"))
        merge(["--out", str(out)])
    summary = build(_args(raw, out, "--part", "1/2"))
    assert summary == {"part": "1/2", "jobs": 2, "jobs_left": 0, "out": str(out)}
    assert not (out / "manifest.json").exists()
    merge(["--out", str(out)])
    assert _tar_hashes(out) == _tar_hashes(local)
    assert _manifest(out) == _manifest(local)


def test_cluster_user_errors_are_one_line(raw, tmp_path, capsys, monkeypatch):
    from lit_avatar.cli import main as cli_main

    cases = [
        (["data", "build", *_args(raw, tmp_path / "a", "--part", "2/2")], "error: --part 2/2: expected I/N"),
        (["data", "build", *_args(raw, tmp_path / "b", "--ray-address", "auto")],
         "error: --ray-address: expected --engine ray"),
        (["data", "merge", "--out", str(tmp_path)], "error: --out"),
    ]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [cluster] extra were not installed
    cases.append((["data", "build", *_args(raw, tmp_path / "c", "--engine", "ray")],
                  "error: --engine ray: Ray is not installed; expected `pip install lit-avatar[cluster]`"))
    for argv, start in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(start) and "\n" not in err, err
    assert not (tmp_path / "c").exists()  # nothing written


def _tiny_encoders(folder: Path) -> tuple[str, str]:
    from diffusers import AutoencoderKLWan
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                     temperal_downsample=[True, True], latents_mean=[0.0] * 4,
                     latents_std=[1.0] * 4).save_pretrained(str(folder / "wan" / "vae"))
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(config).save_pretrained(str(folder / "w2v"))
    return str(folder / "wan"), str(folder / "w2v")


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    import tarfile

    arrays = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".npy"):
                    arrays[member.name] = np.load(io.BytesIO(tar.extractfile(member).read()))
    return arrays


@pytest.mark.slow  # ~60 s on a busy 2-core machine: two encoder copies per engine
def test_precompute_in_ray_actors_equals_local(raw, cluster, tmp_path):
    vae, w2v = _tiny_encoders(tmp_path)
    src = tmp_path / "src"
    for name in ("alice/talk25.mp4", "bob/portrait24.mov"):
        (src / name).parent.mkdir(parents=True)
        (src / name).write_bytes((raw["src"] / name).read_bytes())
    outs = {}
    for engine in ("local", "ray"):
        outs[engine] = tmp_path / engine
        # 128 px: x264 bytes of tiny (32 px) clips can differ from run to run, and with them the latents
        build(["--src", str(src), "--out", str(outs[engine]), "--size", "128", "--clip-seconds", "1", "--no-face",
               "--val-fraction", "0", "--sources-per-job", "1", "--precompute-latents", vae,
               "--precompute-audio", w2v, "--no-progress", "--engine", engine, "--workers", "2"])
    local_arrays, ray_arrays = _arrays(outs["local"]), _arrays(outs["ray"])
    assert sorted(local_arrays) == sorted(ray_arrays) and len(local_arrays) == 4 * 3  # 4 clips x 3 arrays
    diff = max(float(np.abs(local_arrays[k] - ray_arrays[k]).max()) for k in local_arrays)
    print(f"precompute ray vs local: max abs diff {diff:.3g}")
    assert diff == 0.0  # the same model on the same CPU kind: equal
    assert _tar_hashes(outs["ray"]) == _tar_hashes(outs["local"])
