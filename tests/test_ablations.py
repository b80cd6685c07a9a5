"""`make ablations` end to end at toy size: every variant's TensorBoard runs carry the same scalar tags."""
import json

import pytest


def _scalar_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.slow
def test_tiny_ablation_run_overlays_in_tensorboard(tmp_path):
    from lit_avatar.ablations import main

    variants = ["full", "no_psb", "no_mci", "no_urcr"]
    demo_args = ("--clips 16 --seconds 1 --val-identities 2 --teacher-steps 2 --teacher-batch 2 --ode-steps 1 "
                 "--ode-batch 2 --dmd-batch 2")
    code = main(["--out", str(tmp_path / "abl"), "--base", str(tmp_path / "base"), "--threads", "1",
                 "--demo-args", demo_args, "--steps", "1", "--seeds", "0,1", "--clips", "2", "--seconds", "2",
                 "--window", "1"])
    assert code == 0
    out = tmp_path / "abl"
    drift_tags = [_scalar_tags(out / "tensorboard" / "drift" / v) for v in variants]
    assert drift_tags[0] >= {"drift/synthsync_r", "drift/ssim_outside_mouth", "drift/ref_ssim", "drift/brightness"}
    assert all(tags == drift_tags[0] for tags in drift_tags)
    train_tags = [_scalar_tags(out / "tensorboard" / f"{v}_s0" / "version_0") for v in variants]
    assert "val/synthsync_r" in train_tags[0] and all(tags == train_tags[0] for tags in train_tags)
    full = json.loads((out / "results" / "full.json").read_text())
    no_mci = json.loads((out / "results" / "no_mci.json").read_text())
    assert full["aggregate"]["synthsync_r_n"] == 2 and len(full["aggregate"]["synthsync_r_ci95"]) == 2
    assert isinstance(no_mci["aggregate"]["flicker_ratio_differs"], bool)
    assert (out / "drift.png").stat().st_size > 0
    table = (out / "ablations.md").read_text()
    assert all(v in table for v in variants) and "±" in table


def test_unknown_variant_is_a_user_error(tmp_path, capsys):
    from lit_avatar.ablations import _parser, load_plan
    from lit_avatar.errors import UserError

    args = _parser().parse_args(["--variants", "full,no_xyz"])
    with pytest.raises(UserError, match=r"--variants: unknown \['no_xyz'\]"):
        load_plan(args)
    cfg, protocol = load_plan(_parser().parse_args(["--quick"]))
    assert protocol["seeds"] == [0] and list(cfg["variants"]) == ["full", "no_psb", "no_mci", "no_urcr"]


def test_write_outputs_gives_every_variant_the_same_drift_tags(tmp_path):
    """The reporting half of `make ablations` on made-up scores: same TensorBoard tags per variant, a PNG,
    and a table whose cells carry the interval and the † of a variant that differs from full."""
    from eval.drift import curve_from_windows
    from lit_avatar.ablations import write_outputs

    cfg = {"title": "t", "baseline": "full", "variants": {"full": "", "no_mci": ""},
           "columns": [{"key": "synthsync_r_credited", "header": "r", "better": "higher", "fmt": ".3f"}],
           "rows": [{"name": "full (all)", "results": "x"}, {"name": "no_mci (clean)", "results": "y"}]}
    bounds = [(0, 25), (25, 50), (50, 75)]

    def curve(vals):
        return {"synthsync_r": curve_from_windows(bounds, vals), "brightness": curve_from_windows(bounds, vals)}

    per_seed = {"full": {"synthsync_r_credited": [0.88, 0.85, 0.90]},
                "no_mci": {"synthsync_r_credited": [0.80, 0.78, 0.83]}}
    curves = {"full": [curve([0.9, 0.8, 0.7])] * 3, "no_mci": [curve([0.9, 0.6, 0.5])] * 3}
    curves = {v: {k: [c[k] for c in cs] for k in cs[0]} for v, cs in curves.items()}
    table = write_outputs(tmp_path, cfg, per_seed, curves, 0.32, "cmd")
    tags = [_scalar_tags(tmp_path / "tensorboard" / "drift" / v) for v in ("full", "no_mci")]
    assert tags[0] == tags[1] == {"drift/synthsync_r", "drift/brightness"}
    assert "| no_mci (clean) | 0.803 ± 0.063 †" in table and "| full (all) | **0.877** ± 0.063 |" in table
    assert (tmp_path / "drift.png").stat().st_size > 0
