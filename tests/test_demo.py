"""`make demo` checks its own result: a teacher trained too briefly stops the demo with one plain line."""
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_with_an_untrained_teacher_exits_nonzero_with_one_line(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "lit_avatar.demo", "--out", str(out), "--threads", "1", "--clips", "16",
           "--seconds", "1", "--val-identities", "2", "--teacher-steps", "5", "--teacher-batch", "2",
           "--sample-frames", "8", "--num-samples", "2", "--teacher-sample-steps", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout + run.stderr
    failed = [line for line in run.stdout.splitlines() if line.startswith("demo failed:")]
    assert len(failed) == 1 and "do not show the held-out identity" in failed[0]
    assert "[3/6]" not in run.stdout  # distillation is skipped once the teacher failed
    terminal = run.stdout + run.stderr
    for chatter in ("Tip:", "module(s) in eval mode", "deprecated", "Seed set to"):
        assert chatter not in terminal
    log = (out / "demo.log").read_text()
    assert "eval mode" in log  # the chatter is kept, in the log file
    # stderr is a pipe here, not a terminal: the step bar draws nothing (its redraws would fill a log file)
    assert "teacher:" not in run.stderr and "5/5" not in run.stderr


def test_demo_rejects_a_zero_step_count(tmp_path):
    cmd = [sys.executable, "-m", "lit_avatar.demo", "--out", str(tmp_path / "d"), "--teacher-steps", "0"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["error: --teacher-steps: expected an integer >= 1, got 0"]


@pytest.mark.slow
def test_tiny_demo_runs_every_stage_with_keep_going(tmp_path):
    """All six stages at toy size: the summary carries appearance beside SynthSync, and the frame grid exists."""
    import json

    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "lit_avatar.demo", "--out", str(out), "--threads", "1", "--clips", "16",
           "--seconds", "1", "--val-identities", "2", "--teacher-steps", "3", "--teacher-batch", "2",
           "--ode-steps", "2", "--ode-batch", "2", "--dmd-steps", "2", "--dmd-batch", "2", "--sample-frames", "8",
           "--num-samples", "2", "--teacher-sample-steps", "2", "--stream-seconds", "2", "--keep-going"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 1, run.stdout + run.stderr  # an untrained teacher still fails the check
    summary = json.loads((out / "summary.json").read_text())
    for who in ("teacher", "student"):
        assert 0 <= summary[f"{who}_ssim_outside_mouth"] < 0.5 and summary[f"{who}_synthsync_r_credited"] == 0.0
    assert {"ssim_outside_mouth", "ref_ssim", "synthsync_r"} <= set(summary["stream"])
    assert (out / "frame_grid.png").is_file() and summary["seconds_per_step"]["teacher"] > 0
    assert sum(line.startswith("demo failed:") for line in run.stdout.splitlines()) == 1
