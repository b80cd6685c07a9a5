"""bench.live_prompt_study: the per-block scores and seams of a changed stream against its control, and the whole
runner at toy size (a 1-step caption teacher -> 1-step ODE init -> 1-step DMD student -> live streams)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from bench import live_prompt_study as live
from lit_avatar.causal_grid import CausalGrid


def test_score_stream_pairs_blocks_and_finds_the_change_seam():
    grid = CausalGrid(2, 1)  # blocks of 2 frames: seams at frames 2, 4, 6
    control = np.full((8, 4, 4, 3), 100, np.uint8)
    changed = control.copy()
    changed[4:] = 120  # the change from block 2 on: a step of 20 at the seam of frame 4
    mask = np.ones((4, 4), bool)
    info = {"mask": mask, "true": np.full(3, 100.0), "named": np.full(3, 200.0)}
    scores = live.score_stream(changed, control, grid, info, change_block=2)
    assert scores["response_per_block"] == pytest.approx([0, 0, 0.2, 0.2])
    assert scores["response_before"] == 0 and scores["response_after"] == pytest.approx(0.2)
    assert scores["max_abs_before"] == 0
    assert scores["seam_change_changed"] == pytest.approx(20) and scores["seam_change_control"] == 0
    assert scores["seam_other_changed"] == 0 and scores["score_control_after"] == 0


def test_runner_end_to_end_at_toy_size(tmp_path):
    from lit_avatar import caption_study, pipeline
    from lit_avatar.checkpoint import read_generator

    data = tmp_path / "data"
    caption_study.make_data(data, SimpleNamespace(clips=10, identities=None, seed=0, val_identities=2))
    stage = caption_study.teacher_stage("teacher", SimpleNamespace(steps=1, batch=2, frames=4),
                                        data / "text_encoder", tmp_path / "cache")
    teacher, _ = pipeline.fit_stage(stage, data, tmp_path / "logs", quiet=True)
    out = tmp_path / "live"
    assert live.main(["--teacher", str(teacher), "--data", str(data), "--out", str(out), "--ode-steps", "1",
                      "--dmd-steps", "1", "--batch", "2", "--frames", "4", "--val-identities", "2",
                      "--eval-clips", "1", "--seeds", "0", "--blocks", "3", "--change-block", "1",
                      "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["records"]) == 2 * len(caption_study.SCORED)  # 1 clip x 1 seed x with/without reference
    assert len(results["rows"]) == 2 * len(caption_study.SCORED)
    for record in results["records"]:
        assert record["max_abs_before"] == 0 and record["response_per_block"][0] == 0
        assert len(record["response_per_block"]) == 3 and record["other_name"] != record["true_name"]
    record = read_generator(results["student"]).record
    assert record["text_encoder"]["init_args"]["path"] == str(data / "text_encoder")


def test_change_block_must_fall_inside_the_stream(tmp_path, capsys):
    from lit_avatar.errors import run_main

    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: live.main(["--out", str(tmp_path), "--blocks", "4", "--change-block", "4"]))
    assert exit_info.value.code == 2
    assert "error: --change-block 4: expected 1 <= it < --blocks (4)" in capsys.readouterr().err
