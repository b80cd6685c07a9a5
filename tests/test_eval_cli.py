"""`lit-avatar eval` end to end on tiny videos with test-made weights, and `lit-avatar table`."""
import json

import numpy as np
import pytest
import torch
from test_eval_csim import _tiny_arcface
from test_eval_fvd import TinyI3D
from test_eval_synthsync import BOX, _audio_for, _draw, _signal

from eval.cli import main_eval, main_table
from eval.fid import FIDInceptionV3
from eval.syncnet import SyncNet
from lit_avatar.data import media
from lit_avatar.errors import UserError

T = 16


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    torch.manual_seed(0)
    weights = root / "weights"
    (weights / "models" / "buffalo_l").mkdir(parents=True)
    torch.save(FIDInceptionV3().state_dict(), weights / "pt_inception-2015-12-05-6726825d.pth")
    torch.jit.script(TinyI3D()).save(str(weights / "i3d_torchscript.pt"))
    torch.save(SyncNet().state_dict(), weights / "syncnet_v2.model")
    _tiny_arcface(weights / "models" / "buffalo_l" / "w600k_r50.onnx")
    gen, real = root / "gen", root / "real"
    gen.mkdir()
    real.mkdir()
    for k, name in enumerate(["a", "b", "only_gen"]):
        sig = _signal(T if name != "only_gen" else 8, seed=k)  # only_gen: shorter, fewer SyncNet windows
        frames = _draw(sig, size=64)
        audio = _audio_for(sig, seed=k)
        media.write_video(gen / f"{name}.mp4", frames, fps=25, audio=audio)
        (gen / f"{name}.json").write_text(json.dumps({"mouth_box": list(BOX), "face_box": [0.1, 0.1, 0.9, 0.95]}))
        if name != "only_gen":
            noisy = np.clip(frames.astype(int) + np.random.default_rng(k).integers(-20, 20, frames.shape), 0, 255)
            media.write_video(real / f"{name}.mp4", noisy.astype(np.uint8), fps=25, audio=audio)
    media.write_video(real / "only_real.mp4", _draw(_signal(T, 9), size=64), fps=25)
    return root


def test_eval_end_to_end(workspace, capsys):
    out = workspace / "out" / "results.json"
    code = main_eval(["--gen", str(workspace / "gen"), "--real", str(workspace / "real"),
                      "--weights-dir", str(workspace / "weights"), "--out", str(out), "--window", "0.2",
                      "--fid-frame-stride", "16", "--no-progress"])
    assert code == 0
    res = json.loads(out.read_text())
    err = capsys.readouterr().err
    assert "only_gen" in err and "only_real" in err
    assert res["unmatched"] == {"gen_only": ["only_gen"], "real_only": ["only_real"]}
    assert set(res["computed"]) == {"fid", "fvd", "sync", "csim", "synthsync", "appearance", "drift", "seams"}
    assert res["videos"]["only_gen"]["frames"] == 8
    for name in ("a", "b"):
        row = res["videos"][name]
        assert row["frames"] == T
        for key in ("sync_c", "sync_d", "csim", "synthsync_r", "synthsync_best_r"):
            assert np.isfinite(row[key]), (name, key)
        assert -15 <= row["av_offset"] <= 15 and abs(row["synthsync_best_lag"]) <= 5
        assert row["sync_d"] > 0 and row["sync_c"] >= 0 and -1 <= row["csim"] <= 1
        assert row["face_source"] == "sidecar" and row["frames_without_face"] == 0
        assert row["fid"] is None  # stride 16: one frame per video, no per-video covariance (keeps the test fast)
        assert row["drift"]["fid"]["values"] == [None] * len(row["drift"]["fid"]["times"])
        assert row["fvd"] is None  # one 16-frame clip per video: no per-video covariance
        assert row["synthsync_r"] > 0.8  # drawn mouths follow their own audio
        assert set(row["drift"]) == {"fid", "sync_c", "csim", "synthsync_r", "ref_ssim"}
        assert 0 <= row["ssim_outside_mouth"] <= 1 and "synthsync_r_credited" in row
        assert (workspace / "out" / "results_drift" / f"{name}.png").is_file()
    # the generated-only video still gets the metrics that need no real video
    assert np.isfinite(res["videos"]["only_gen"]["sync_c"]) and "fid" not in res["videos"]["only_gen"]
    agg = res["aggregate"]
    assert agg["num_videos"] == 3
    for key in ("fid", "fvd", "sync_c", "sync_d", "csim", "synthsync_r", "drift_csim_slope_per_min"):
        assert isinstance(agg[key], float), key
    assert agg["fid"] > 0 and agg["fvd"] > 0
    # each number with the protocol and the counts behind it
    protocols = res["protocols"]
    assert protocols["fid"] == {"protocol": "pytorch-fid every 16th frame", "gen_frames": 2, "real_frames": 2}
    assert protocols["fvd"] == {"protocol": "stylegan-v", "clip_frames": 16, "gen_clips": 2, "real_clips": 2}
    assert protocols["sync"]["protocol"] == "syncnet_python" and protocols["sync"]["windows"] == 11 + 11 + 3
    assert protocols["csim"]["frames"] == protocols["synthsync"]["frames"] == T + T + 8
    np.testing.assert_allclose(agg["csim"], np.mean([res["videos"][n]["csim"] for n in ("a", "b", "only_gen")]))
    assert list((workspace / "out" / "results_drift" / "tensorboard").iterdir())


def test_results_report_protocols_and_frames_without_a_face(workspace, tmp_path, capsys):
    """No face_box sidecar: faces come from the detector under --weights-dir (a test-made SCRFD that sees
    colour); frames where it finds nothing are counted per video, a video with no face at all is not scored
    on whole frames; each metric's protocol and counts are written."""
    from data_tools.toy_sources import write_toy_scrfd

    weights = tmp_path / "weights"
    (weights / "models" / "buffalo_l").mkdir(parents=True)
    (weights / "syncnet_v2.model").symlink_to(workspace / "weights" / "syncnet_v2.model")
    write_toy_scrfd(weights / "models" / "buffalo_l" / "det_10g.onnx", (256, 256))
    gen = tmp_path / "gen"
    gen.mkdir()
    sig = _signal(T, seed=3)
    frames = np.full((T, 256, 256, 3), 128, np.uint8)
    frames[:, 32:128, 64:160] = (240, 120, 60)  # a red-dominant square on the toy detector's grid
    frames[5:9] = 128  # four frames without a face
    media.write_video(gen / "face.mp4", frames, fps=25, audio=_audio_for(sig))
    media.write_video(gen / "noface.mp4", np.full((T, 256, 256, 3), 128, np.uint8), fps=25, audio=_audio_for(sig))
    out = tmp_path / "results.json"
    assert main_eval(["--gen", str(gen), "--metrics", "sync,synthsync", "--weights-dir", str(weights),
                      "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    face, noface = res["videos"]["face"], res["videos"]["noface"]
    assert face["face_source"] == "detector:scrfd" and face["frames_without_face"] == 4
    assert np.isfinite(face["sync_c"]) and np.isfinite(face["sync_d"])
    assert noface["frames_without_face"] == T and "sync_c" not in noface
    assert "noface: no face found in any of 16 frames" in capsys.readouterr().err
    assert res["protocols"]["sync"] == {"protocol": "syncnet_python", "videos": 1, "windows": T - 5,
                                        "crop": res["protocols"]["sync"]["crop"]}
    assert "median filter" in res["protocols"]["sync"]["crop"]


def test_missing_weights_are_skipped_with_file_named(workspace, capsys):
    out = workspace / "out2.json"
    code = main_eval(["--gen", str(workspace / "gen"), "--metrics", "fvd,synthsync",
                      "--weights-dir", str(workspace / "nowhere"), "--out", str(out), "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert "skipping fvd: needs --real DIR" in err
    res = json.loads(out.read_text())
    assert res["computed"] == ["synthsync"] and np.isfinite(res["aggregate"]["synthsync_r"])
    main_eval(["--gen", str(workspace / "gen"), "--real", str(workspace / "real"), "--metrics", "sync",
               "--weights-dir", str(workspace / "nowhere"), "--out", str(out), "--no-progress"])
    assert "skipping sync: weight file" in capsys.readouterr().err and "syncnet_v2.model not found" in open(out).read()
    with pytest.raises(UserError, match="--metrics: unknown metric"):
        main_eval(["--gen", str(workspace / "gen"), "--metrics", "fid,lpips", "--out", str(out)])


def _results(path, **agg):
    path.write_text(json.dumps({"aggregate": agg}))
    return str(path)


def test_table_markdown_cell_by_cell(tmp_path):
    a = _results(tmp_path / "a.json", fid=12.3456, fvd=200.0, sync_c=7.5, sync_d=7.0, csim=0.81)
    b = _results(tmp_path / "b.json", fid=10.0, fvd=250.0, sync_c=7.5, sync_d=7.2, csim=0.85, fps=20.0)
    gt = _results(tmp_path / "gt.json", fid=0.0, fvd=0.0, sync_c=9.0, sync_d=6.0, csim=1.0)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"""title: Test
columns: [fid, fvd, sync_c, sync_d, csim, fps]
rows:
  - {{name: Real, results: {gt}, exclude_from_best: true}}
  - {{name: A, results: {a}, fps: 16}}
  - {{name: B, results: {b}}}
""")
    out = tmp_path / "t.md"
    assert main_table(["--config", str(cfg), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in table]
    assert cells[0] == ["Method", "FID ↓", "FVD ↓", "Sync-C ↑", "Sync-D ↓", "CSIM ↑", "FPS ↑"]
    assert cells[2] == ["Real", "0.00", "0.0", "9.00", "6.00", "1.000", "–"]
    assert cells[3] == ["A", "12.35", "**200.0**", "**7.50**", "**7.00**", "0.810", "16.0"]
    assert cells[4] == ["B", "**10.00**", "250.0", "**7.50**", "7.20", "**0.850**", "**20.0**"]
    assert any("lit-avatar table --config" in ln for ln in lines)
    tex = tmp_path / "t.tex"
    main_table(["--config", str(cfg), "--out", str(tex)])
    assert r"\textbf{10.00}" in tex.read_text() and r"FID $\downarrow$" in tex.read_text()


def test_table_missing_results(tmp_path):
    cfg = tmp_path / "t.yaml"
    missing = tmp_path / "nope.json"
    made = tmp_path / "made.json"
    script = f"import json; json.dump({{'aggregate': {{'fid': 1.0}}}}, open({str(made)!r}, 'w'))"
    cfg.write_text(f"""columns: [fid]
rows:
  - name: X
    results: {made}
    commands: [[python3, -c, "{script}"]]
  - {{name: Y, results: {missing}}}
""")
    with pytest.raises(UserError, match=r"made\.json: results file of row 'X' not found .*--run"):
        main_table(["--config", str(cfg), "--out", str(tmp_path / "t.md")])
    with pytest.raises(UserError, match=r"row 'Y' has no results file .* and no 'commands'"):
        main_table(["--config", str(cfg), "--out", str(tmp_path / "t.md"), "--run"])
    assert made.is_file()  # row X's command ran


@pytest.mark.parametrize("name", ["paper_comparison", "ablations"])
def test_table_configs_are_valid(name, tmp_path):
    """The shipped table YAMLs parse, name known columns, and every command is a list-form argv."""
    from pathlib import Path

    import yaml

    from eval.tables import parse_columns

    root = Path(__file__).resolve().parents[1]
    cfg_path = root / "experiments" / "tables" / f"{name}.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    columns = parse_columns(cfg["columns"], cfg_path)
    if name == "paper_comparison":
        assert {c.key for c in columns} >= {"fid", "fvd", "sync_c", "sync_d", "csim", "fps"}
    else:  # the ablation table: credited sync, appearance, and a metric aimed at each contribution
        keys = {c.key for c in columns}
        assert {"synthsync_r_credited", "ssim_outside_mouth", "first_ssim_outside_mouth", "flicker_ratio",
                "drift_synthsync_r_slope_per_min"} <= keys
        assert all((root / path).is_file() for path in cfg["variants"].values())
        assert len(cfg["protocol"]["seeds"]) >= 3 and cfg["protocol"]["clips"] >= 8 and cfg["protocol"]["seconds"] >= 60
    for row in cfg["rows"]:
        assert row["results"].endswith(".json") and row["commands"]
        for cmd in row["commands"]:
            assert all(isinstance(a, str) for a in cmd), cmd
            if cmd[:2] == ["lit-avatar", "eval"]:  # eval commands parse with our own parser
                from eval.cli import _eval_parser

                args = _eval_parser().parse_args(cmd[2:])
                assert args.out == row["results"]
            for i, arg in enumerate(cmd):
                if arg == "--config":
                    assert (root / cmd[i + 1]).is_file(), cmd[i + 1]
    if name == "ablations":
        assert [r["name"].split()[0] for r in cfg["rows"]] == ["full", "no_psb", "no_mci", "no_urcr"]


def test_dispatcher_prints_one_line_errors(tmp_path, capsys):
    from lit_avatar.cli import main

    assert main(["eval", "--gen", str(tmp_path / "none"), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --gen {tmp_path / 'none'}: not a directory"
    assert main(["table", "--config", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "t.md")]) == 2
    expected = f"error: --config {tmp_path / 't.yaml'}: not found; expected a table YAML (experiments/tables/NAME.yaml)"
    assert capsys.readouterr().err.strip() == expected


def test_generate_set_plans_one_call_per_clip(tmp_path):
    from eval.generate_set import command_for, plan

    (tmp_path / "audio").mkdir()
    (tmp_path / "refs").mkdir()
    for name in ("c1", "c2"):
        (tmp_path / "audio" / f"{name}.wav").write_bytes(b"")
        (tmp_path / "refs" / f"{name}.png").write_bytes(b"")
    (tmp_path / "refs" / "c1.json").write_text(json.dumps({"mouth_box": [0.3, 0.6, 0.7, 0.8]}))
    jobs = plan(str(tmp_path / "audio"), str(tmp_path / "refs"), str(tmp_path / "out"))
    assert [j["name"] for j in jobs] == ["c1", "c2"]
    cmd = command_for(jobs[0], "m.ckpt", ["--no-mci"])
    assert cmd[2:5] == ["lit_avatar.cli", "generate", "--ckpt"]
    assert cmd[cmd.index("--mouth-box") + 1] == "0.3,0.6,0.7,0.8" and cmd[-1] == "--no-mci"
    assert "--mouth-box" not in command_for(jobs[1], "m.ckpt", [])
    (tmp_path / "refs" / "c2.png").unlink()
    with pytest.raises(UserError, match="--refs .*: no reference image for c2"):
        plan(str(tmp_path / "audio"), str(tmp_path / "refs"), str(tmp_path / "out"))


def test_table_run_then_build(tmp_path):
    made = tmp_path / "made.json"
    script = f"import json; json.dump({{'aggregate': {{'fid': 3.25, 'csim': 0.5}}}}, open({str(made)!r}, 'w'))"
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"""columns: [fid, csim]
rows:
  - name: X
    results: {made}
    commands: [[python3, -c, "{script}"]]
""")
    main_table(["--config", str(cfg), "--out", str(tmp_path / "t.md"), "--run"])
    assert "| X | **3.25** | **0.500** |" in (tmp_path / "t.md").read_text()


def test_results_json_is_strict(tmp_path):
    from lit_avatar.data.atomic import write_json_atomic

    write_json_atomic(tmp_path / "r.json", {"a": float("nan"), "b": [np.float64(1.5), float("inf")]})
    strict = json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert strict == {"a": None, "b": [1.5, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_eval_prints_no_library_warnings(workspace, tmp_path):
    """What a user reads from `lit-avatar eval` is its own output: no library warnings (a fresh process, since
    torch warns about a non-writable NumPy array only once per process)."""
    import subprocess
    import sys

    from PIL import Image

    refs = tmp_path / "refs"  # reference images: PIL's arrays are read-only
    refs.mkdir()
    for name in ("a", "b"):
        Image.fromarray(media.read_video(workspace / "real" / f"{name}.mp4")[0][0]).save(refs / f"{name}.png")
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "lit_avatar.cli", "eval", "--gen", str(workspace / "gen"),
                          "--real", str(workspace / "real"), "--refs", str(refs), "--metrics", "synthsync,appearance",
                          "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr and "warn" not in run.stderr.lower(), run.stderr
    assert sorted(json.loads(out.read_text())["computed"]) == ["appearance", "synthsync"]
