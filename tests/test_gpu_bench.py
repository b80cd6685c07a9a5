"""bench/gpu.sh --dry-run: the prepared GPU benchmark's own code, at tiny scale, as the GPU machine runs it
(from the checkout, without jsonargparse, omegaconf, webdataset or PyAV, which that machine lacks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MISSING_ON_GPU = ("jsonargparse", "omegaconf", "webdataset", "av")

# importing one of them fails (a finder that raised instead would break libraries probing with find_spec)
BLOCKER = f'''
import importlib.abc, importlib.machinery, sys
class _Missing(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {MISSING_ON_GPU!r}:
            return importlib.machinery.ModuleSpec(name, self)
        return None
    def create_module(self, spec):
        raise ImportError(f"{{spec.name}} is not installed on the GPU machine")
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, _Missing())
'''


def test_gpu_sh_dry_run(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(site), "OUT": str(tmp_path / "out")}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_bench.json").read_text())
    assert result["dry_run"] is True
    for section in ("checks", "eager", "graphs", "train"):
        assert "error" not in result[section], result[section].get("traceback")
    stream = result["eager"]["stream"]
    assert result["eager"]["stand_ins"]["vae"].startswith("WanVAE: AutoencoderKLWan")
    assert result["eager"]["stand_ins"]["audio"].startswith("Wav2Vec2AudioEncoder")
    assert stream["blocks"] >= 4 and stream["time_to_first_frame_s"] > 0
    assert all(stream["stages_s"][k]["p50"] > 0 for k in ("audio_s", "dit_s", "vae_s"))
    assert set(stream["latency_s"]["steady"]) == {"p50", "p90", "p99"}
    assert result["eager"]["warmup"]["blocks"] >= 2
    assert result["graphs"]["cuda_graphs"] and result["graphs"]["stream"]["blocks"] >= 2
    # every capture in the warm-up, none inside the measured stream's timer (issue 23)
    assert result["graphs"]["warmup"]["graph_captures"] > 0 and result["graphs"]["stream"]["graph_captures"] == 0
    ran = [name for name in result if name in ("checks", "graphs", "eager", "train")]
    assert ran == ["checks", "graphs", "eager", "train"]  # in order of importance (compiled: skipped on a CPU)
    stages = result["train"]["stages"]
    assert set(stages) == {"teacher", "ode_init", "self_forcing"}
    assert all(len(s["step_s"]) == 2 and min(s["step_s"]) > 0 for s in stages.values())
    # the rows for BENCHMARKS.md end the output
    assert "| frames/s end to end (audio + DiT + VAE), whole stream |" in proc.stdout
    assert "| self_forcing |" in proc.stdout


def test_without_jsonargparse_flags_still_parse_and_options_files_say_why_not(tmp_path):
    """The plain-argparse fallback of lit_avatar.command: the same one-line errors; --config is refused aloud."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    cases = [(["--dryrun"], "error: --dryrun: unknown option; did you mean --dry-run?"),
             (["--stream-seconds", "long"], "error: --stream-seconds 'long': expected a number"),
             (["--config", "gpu.yaml"], "error: gpu.yaml: options files need jsonargparse")]
    for argv, expected in cases:
        proc = subprocess.run([sys.executable, "-m", "bench.gpu", *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().startswith(expected), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
