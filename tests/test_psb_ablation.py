"""The PSB ablation (experiments/tables/psb.yaml): first-block error against the real recording, paired
baselines per variant, variant files that change only the step list, and a toy end-to-end run."""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "experiments" / "tables" / "psb.yaml"
STEPS = {"psb_8_2": [8, 2], "flat_2": [2], "psb_4_1": [4, 1], "flat_1": [1]}


def test_first_frames_error_matches_hand_computed_mse_and_psnr():
    from eval.stream_scores import first_frames_error

    rng = np.random.default_rng(0)
    real = rng.integers(20, 200, size=(25, 8, 8, 3), dtype=np.uint8)
    gen = real.copy()
    gen[:2] += 10  # only the first block (2 frames) is off, by 10 levels everywhere
    out = first_frames_error(gen, real, block_frames=2, first_frames=25)
    assert out["first_block_mse"] == pytest.approx((10 / 255) ** 2)
    assert out["first_block_psnr"] == pytest.approx(20 * np.log10(25.5))
    assert out["first_mse"] == pytest.approx((10 / 255) ** 2 * 2 / 25)
    assert out["first_psnr"] == pytest.approx(out["first_block_psnr"] + 10 * np.log10(25 / 2))


def test_stream_scores_carry_the_first_block_error():
    from eval.stream_scores import score_streams
    from lit_avatar.causal_grid import CausalGrid

    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, size=(2, 50, 16, 16, 3), dtype=np.uint8)
    gen = real.copy()
    gen[:, :4] = 128  # a flat grey first block of 4 frames, the rest exact
    audio = rng.uniform(-1, 1, size=(2, 32000)).astype(np.float32)
    scalars, _ = score_streams(gen, real, real[:, 0], [[0.25, 0.6, 0.75, 0.9]] * 2, audio, CausalGrid(4),
                               window_s=1.0, first_seconds=1.0)
    grey = ((real[:, :4].astype(np.float64) - 128) / 255) ** 2
    assert scalars["first_block_mse"] == pytest.approx(grey.mean())
    assert scalars["first_mse"] == pytest.approx(grey.mean() * 4 / 25)


def test_summarize_pairs_each_variant_with_its_own_partner():
    from eval.stats import summarize

    per_seed = {"psb_8_2": {"psnr": [20.0, 21.4, 22.1]}, "flat_2": {"psnr": [19.0, 20.5, 21.0]},
                "psb_4_1": {"psnr": [15.0, 15.5, 16.0]}, "flat_1": {"psnr": [15.2, 15.3, 16.1]}}
    out = summarize(per_seed, {"psb_8_2": "flat_2", "psb_4_1": "flat_1"})
    diffs = np.array([1.0, 0.9, 1.1])
    low, high = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=stats.sem(diffs))
    assert out["psb_8_2"]["psnr_diff"] == pytest.approx(1.0)
    assert out["psb_8_2"]["psnr_diff_ci95"] == pytest.approx([low, high])
    assert out["psb_8_2"]["psnr_differs"] is True
    assert out["psb_4_1"]["psnr_diff"] == pytest.approx(np.mean([-0.2, 0.2, -0.1]))
    assert out["psb_4_1"]["psnr_differs"] is False
    assert "psnr_diff" not in out["flat_2"] and "psnr_diff" not in out["flat_1"]


def test_psb_table_plan_pairs_and_variant_files():
    import yaml

    from eval.tables import parse_columns
    from lit_avatar.ablations import _parser, load_plan

    cfg, protocol = load_plan(_parser().parse_args(["--table", str(TABLE)]))
    assert cfg["baseline"] == {"psb_8_2": "flat_2", "psb_4_1": "flat_1"}
    assert len(protocol["seeds"]) >= 3 and protocol["clips"] >= 8 and protocol["seconds"] >= protocol["first_seconds"]
    for variant, path in cfg["variants"].items():
        rollout = yaml.safe_load((ROOT / path).read_text())["model"]["init_args"]["rollout"]
        assert rollout == {"psb": {"enabled": True, "steps": STEPS[variant]}}
    keys = {c.key for c in parse_columns(cfg["columns"], TABLE)}
    assert {"first_block_psnr", "first_block_psnr_diff", "first_psnr", "first_synthsync_r"} <= keys
    cfg, _ = load_plan(_parser().parse_args(["--table", str(TABLE), "--variants", "psb_4_1,flat_1,flat_2"]))
    assert cfg["baseline"] == {"psb_4_1": "flat_1"}


def test_a_baseline_that_is_no_variant_is_a_user_error(tmp_path):
    import yaml

    from lit_avatar.ablations import _parser, load_plan
    from lit_avatar.errors import UserError

    cfg = yaml.safe_load(TABLE.read_text())
    cfg["baseline"] = {"psb_8_2": "flat_3"}
    bad = tmp_path / "t.yaml"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(UserError, match=r"baseline: \['psb_8_2: flat_3'\] are not variants; expected some of "
                                        r"psb_8_2,flat_2,psb_4_1,flat_1"):
        load_plan(_parser().parse_args(["--table", str(bad)]))


@pytest.mark.slow
def test_tiny_psb_ablation_runs_end_to_end(tmp_path):
    from lit_avatar.ablations import main
    from lit_avatar.checkpoint import load_generator

    demo_args = ("--clips 16 --seconds 1 --val-identities 2 --teacher-steps 2 --teacher-batch 2 --ode-steps 1 "
                 "--ode-batch 2 --dmd-batch 2")
    out = tmp_path / "psb"
    code = main(["--table", str(TABLE), "--out", str(out), "--base", str(tmp_path / "base"), "--threads", "1",
                 "--demo-args", demo_args, "--steps", "1", "--seeds", "0,1", "--clips", "2", "--seconds", "2",
                 "--variants", "psb_4_1,flat_1"])
    assert code == 0
    for variant in ("psb_4_1", "flat_1"):
        bundle = load_generator(out / "tensorboard" / f"{variant}_s0" / "version_0" / "checkpoints" / "last.ckpt")
        assert bundle.rollout_options.psb.steps == STEPS[variant]
    psb = json.loads((out / "results" / "psb_4_1.json").read_text())
    assert psb["baseline"] == "flat_1" and psb["aggregate"]["first_block_psnr_n"] == 2
    assert isinstance(psb["aggregate"]["first_block_psnr_differs"], bool)
    table = (out / "ablations.md").read_text()
    assert "psb_4_1 (PSB [4, 1])" in table and "±" in table
