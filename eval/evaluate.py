"""`lit-avatar eval`: score generated videos on disk against real ones and write results.json.

Metrics whose weights are missing are skipped with a one-line message naming the file they need, so a
partial weights folder still gives every metric it can.
"""
from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval.inputs import load_audio_for, load_reference, match_videos, read_sidecar
from lit_avatar.data.atomic import write_json_atomic
from lit_avatar.errors import UserError

ALL_METRICS = ("fid", "fvd", "sync", "csim", "drift", "synthsync", "appearance", "seams")
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS = {
    "fid": FID_WEIGHTS,
    "fvd": "i3d_torchscript.pt",
    "sync": "syncnet_v2.model",
    "csim": "models/buffalo_l/w600k_r50.onnx",
}
DETECTOR = "models/buffalo_l/det_10g.onnx"


@dataclass
class EvalOptions:
    """What `lit-avatar eval` was asked to do (the parsed command line)."""

    gen: str
    out: str
    real: str | None = None
    refs: str | None = None
    audio: str | None = None
    metrics: tuple[str, ...] = ALL_METRICS
    weights_dir: str | None = None
    fps: float = 25.0
    window: float = 10.0
    fid_frame_stride: int = 1
    batch_size: int = 16
    device: str = "cpu"
    drift_dir: str | None = None
    tensorboard_dir: str | None = None
    sync_protocol: str = "syncnet_python"
    fvd_protocol: str = "stylegan-v"
    command: str = ""
    progress: bool = True
    notes: list[str] = field(default_factory=list)


def parse_metrics(text: str) -> tuple[str, ...]:
    """'fid,sync' -> ('fid', 'sync'); UserError naming --metrics for unknown names."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ALL_METRICS]
    if bad or not names:
        raise UserError(f"--metrics: unknown metric(s) {', '.join(bad) or '(none)'}; "
                        f"expected some of {','.join(ALL_METRICS)}")
    return names


def find_weights(metric: str, weights_dir: str | None) -> tuple[Path | None, str | None]:
    """(path, None) if the metric's weight file exists, else (None, a one-line skip message)."""
    need = WEIGHTS[metric]
    if weights_dir is None:
        return None, f"skipping {metric}: needs {need} under --weights-dir (none given)"
    root = Path(weights_dir)
    path = root / need
    if metric == "fid" and not path.is_file():
        alts = sorted(root.glob("pt_inception-2015-12-05-*.pth"))
        path = alts[0] if alts else path
    if not path.is_file():
        return None, f"skipping {metric}: weight file {path} not found"
    return path, None


def _say(opts: EvalOptions, line: str) -> None:
    opts.notes.append(line)
    print(line, file=sys.stderr)


def _load_scorers(opts: EvalOptions, has_real: bool) -> tuple[dict, object | None]:
    """Build the scorers whose inputs and weights are present; returns (scorers, face detector or None)."""
    from eval import scorers as S

    out: dict = {}
    for metric in opts.metrics:
        if metric in ("drift",):
            continue
        if metric in ("fid", "fvd") and not has_real:
            _say(opts, f"skipping {metric}: needs --real DIR with videos named like the generated ones")
            continue
        if metric == "synthsync":
            out[metric] = S.SynthSyncScorer()
            continue
        if metric == "seams":  # needs only the generated frames and the grid in their sidecar
            out[metric] = S.SeamScorer()
            continue
        if metric == "appearance":  # SynthTalk: SSIM/PSNR outside the mouth box (eval.appearance)
            from eval.appearance import AppearanceScorer

            out[metric] = AppearanceScorer()
            continue
        path, why = find_weights(metric, opts.weights_dir)
        if why:
            _say(opts, why)
            continue
        if metric == "fid":
            from eval.fid import load_fid_inception

            out[metric] = S.FIDScorer(load_fid_inception(path), opts.batch_size, opts.fid_frame_stride, opts.device)
        elif metric == "fvd":
            from eval.fvd import load_i3d

            out[metric] = S.FVDScorer(load_i3d(path), max(opts.batch_size // 4, 1), opts.device, opts.fvd_protocol)
        elif metric == "sync":
            from eval.syncnet import load_syncnet

            out[metric] = S.SyncScorer(load_syncnet(path), device=opts.device, protocol=opts.sync_protocol)
        elif metric == "csim":
            from eval.csim import ArcFace

            out[metric] = S.CSIMScorer(ArcFace(path))
    detector = None
    if "sync" in out or "csim" in out:
        from data_tools.faces import load_face_detector

        det_path = Path(opts.weights_dir) / DETECTOR if opts.weights_dir is not None else None
        if det_path is None or not det_path.is_file():
            _say(opts, f"face detector: {DETECTOR} not under --weights-dir; using OpenCV's Haar cascade "
                       "(lower quality) where a video has no face_box sidecar")
            det_path = None
        detector = load_face_detector(str(det_path) if det_path else None)
    return out, detector


@dataclass
class FaceGeometry:
    """Face boxes [T,4] and 5-point landmarks [T,5,2] in pixels of one video, where they came from, and
    how many frames had no face (filled from the nearest detections; NaN when no frame had one)."""

    boxes: np.ndarray
    landmarks: np.ndarray
    source: str
    frames_without_face: int = 0

    @property
    def usable(self) -> bool:
        return bool(np.isfinite(self.boxes).all())


def face_geometry(frames: np.ndarray, sidecar: dict, detector) -> FaceGeometry:
    """The sidecar's face_box (normalised) when there is one, else the detector's track (eval.faces)."""
    from eval.csim import landmarks_from_box
    from eval.faces import face_track, normalised_to_pixels

    t, h, w, _ = frames.shape
    if "face_box" in sidecar:
        box = normalised_to_pixels(sidecar["face_box"], w, h)
        return FaceGeometry(np.repeat(box[None], t, 0), np.repeat(landmarks_from_box(box)[None], t, 0), "sidecar")
    boxes, marks, found = face_track(frames, detector)
    if marks is None:
        marks = np.stack([landmarks_from_box(b) for b in boxes]) if found.any() else np.full((t, 5, 2), np.nan)
    return FaceGeometry(boxes, marks, f"detector:{detector.name}", int(t - found.sum()))


def run_eval(opts: EvalOptions) -> dict:
    """Score every generated video; returns (and writes) the results dict."""
    from lit_avatar.data.media import read_video

    matching = match_videos(opts.gen, opts.real)
    for line in matching.report():
        _say(opts, line)
    scorers, detector = _load_scorers(opts, has_real=bool(matching.matched))
    drift_on = "drift" in opts.metrics
    out_path = Path(opts.out)
    drift_dir = Path(opts.drift_dir) if opts.drift_dir else out_path.parent / f"{out_path.stem}_drift"
    tb_dir = Path(opts.tensorboard_dir) if opts.tensorboard_dir else drift_dir / "tensorboard"

    videos: dict[str, dict] = {}
    names = sorted(matching.gen)
    from lit_avatar.quiet import progress_bar

    for name in progress_bar(names, desc="eval", unit="video", enabled=opts.progress):
        videos[name] = _score_video(name, matching, scorers, detector, opts, read_video, drift_on, drift_dir, tb_dir)

    aggregate: dict = {"num_videos": len(videos)}
    for scorer in scorers.values():
        aggregate.update(scorer.aggregate())
    if drift_on:
        aggregate.update(_drift_aggregate(videos))
    speeds = [row["gen_fps"] for row in videos.values() if "gen_fps" in row]
    if speeds:
        aggregate["fps"] = float(np.mean(speeds))
    results = {
        "command": opts.command,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "gen": str(opts.gen),
        "real": str(opts.real) if opts.real else None,
        "metrics": list(opts.metrics),
        "computed": sorted(scorers) + (["drift"] if drift_on else []),
        "notes": list(opts.notes),
        "unmatched": {"gen_only": matching.gen_only, "real_only": matching.real_only},
        "aggregate": aggregate,
        "protocols": {metric: scorer.protocol_info() for metric, scorer in scorers.items()},
        "videos": videos,
    }
    write_json_atomic(out_path, results)
    return results


def _drift_aggregate(videos: dict[str, dict]) -> dict:
    """Mean drift slope per minute and mean last-minus-first of each curve over the videos."""
    out: dict = {}
    kinds = sorted({k for row in videos.values() for k in row.get("drift", {})})
    for k in kinds:
        curves = [row["drift"][k] for row in videos.values() if k in row.get("drift", {})]
        slopes = [c["slope_per_min"] for c in curves if np.isfinite(c["slope_per_min"])]
        changes = [c["last_minus_first"] for c in curves if np.isfinite(c["last_minus_first"])]
        out[f"drift_{k}_slope_per_min"] = float(np.mean(slopes)) if slopes else None
        out[f"drift_{k}_last_minus_first"] = float(np.mean(changes)) if changes else None
    return out


def _seam_scores(name: str, gen_path: Path, frames: np.ndarray, sidecar: dict, scorer, opts: EvalOptions) -> dict:
    if "grid" not in sidecar:
        _say(opts, f"{name}: seams skipped (needs {gen_path.with_suffix('.json')} with the causal grid that "
                   "`lit-avatar generate` writes)")
        return {}
    return scorer.video(frames, sidecar["grid"])


def _score_video(name, matching, scorers, detector, opts, read_video, drift_on, drift_dir, tb_dir) -> dict:
    gen_path = matching.gen[name]
    frames, _ = read_video(gen_path, fps=opts.fps)
    row: dict = {"frames": int(len(frames))}
    sidecar = read_sidecar(gen_path)
    latency = sidecar.get("latency")
    speed = latency.get("frames_per_second") if isinstance(latency, dict) else None
    if isinstance(speed, (int, float)):
        row["gen_fps"] = float(speed)  # generation speed reported by `lit-avatar generate`
    curves: dict = {}
    real_frames = None
    if name in matching.real and ("fid" in scorers or "fvd" in scorers or "csim" in scorers or "appearance" in scorers):
        real_frames = read_video(matching.real[name], fps=opts.fps)[0]
    needs_audio = "sync" in scorers or "synthsync" in scorers or "appearance" in scorers
    audio = load_audio_for(name, gen_path, opts.audio) if needs_audio else None
    if needs_audio and audio is None:
        _say(opts, f"{name}: no audio (no {opts.audio or '--audio DIR'}/{name}.wav and no audio stream): "
                   "sync metrics skipped")

    if real_frames is not None:
        for metric in ("fid", "fvd"):
            if metric in scorers:
                row.update(scorers[metric].video(frames, real_frames))
        if drift_on and "fid" in scorers:
            curves["fid"] = scorers["fid"].drift(opts.fps, opts.window)
    faces = None
    if "sync" in scorers or "csim" in scorers:
        faces = face_geometry(frames, sidecar, detector)
        row["face_source"] = faces.source
        row["frames_without_face"] = faces.frames_without_face
        if not faces.usable:
            _say(opts, f"{name}: no face found in any of {len(frames)} frames: sync and csim skipped")
    if "sync" in scorers and audio is not None and faces.usable:
        row.update(scorers["sync"].video(frames, audio, faces.boxes, opts.fps))
        curve = scorers["sync"].drift(len(frames), opts.fps, opts.window) if drift_on else None
        if curve is not None:
            curves["sync_c"] = curve
    if "csim" in scorers and faces.usable:
        row.update(_csim_scores(name, matching, frames, faces, real_frames, sidecar, scorers["csim"], detector, opts))
        if drift_on:
            curves["csim"] = scorers["csim"].drift(opts.fps, opts.window)
    if "synthsync" in scorers:
        if "mouth_box" not in sidecar:
            _say(opts, f"{name}: synthsync skipped (needs {gen_path.with_suffix('.json')} with a mouth_box)")
        elif audio is not None:
            row.update(scorers["synthsync"].video(frames, sidecar["mouth_box"], audio, opts.fps))
            if drift_on:
                curves["synthsync_r"] = scorers["synthsync"].drift(opts.fps, opts.window)
    if "appearance" in scorers:
        if "mouth_box" not in sidecar:
            _say(opts, f"{name}: appearance skipped (needs {gen_path.with_suffix('.json')} with a mouth_box)")
        else:
            reference = load_reference(name, opts.refs)
            if reference is None and real_frames is not None:
                reference = real_frames[0]
            row.update(scorers["appearance"].video(frames, sidecar["mouth_box"], real_frames, reference, audio,
                                                   opts.fps))
            curve = scorers["appearance"].drift(opts.fps, opts.window) if drift_on else None
            if curve is not None:
                curves["ref_ssim"] = curve
    if "seams" in scorers:
        row.update(_seam_scores(name, gen_path, frames, sidecar, scorers["seams"], opts))
    if drift_on and curves:
        row.update(_write_drift(name, curves, drift_dir, tb_dir))
    return row


def _csim_scores(name, matching, frames, faces: FaceGeometry, real_frames, sidecar: dict, scorer, detector,
                 opts: EvalOptions) -> dict:
    """Identity similarity against --refs/<name>, else the real video's first frame, else the generated one's."""
    gen_path = matching.gen[name]
    reference = load_reference(name, opts.refs)
    ref_from = "refs"
    if reference is None:
        if real_frames is not None:
            reference, ref_from = real_frames[0], "real_frame0"
        else:
            reference, ref_from = frames[0], "gen_frame0"
    # the reference's own sidecar if it has one, else the generated video's (same identity and framing)
    own = {"refs": Path(opts.refs or ".") / f"{name}.json", "real_frame0": matching.real.get(name, gen_path)}
    ref_sidecar = read_sidecar(Path(own[ref_from]).with_suffix(".mp4")) if ref_from in own else {}
    ref_faces = face_geometry(reference[None], ref_sidecar or sidecar, detector)
    if not ref_faces.usable:
        _say(opts, f"{name}: no face found in the CSIM reference ({ref_from}): csim skipped")
        return {}
    return {**scorer.video(frames, faces.landmarks, reference, ref_faces.landmarks[0]), "csim_reference": ref_from}


def _write_drift(name: str, curves: dict, drift_dir: Path, tb_dir) -> dict:
    """Plots and logs one video's drift curves; the row's drift fields."""
    from eval.drift import log_tensorboard, plot_curves

    png = drift_dir / f"{name}.png"
    plot_curves(curves, png, title=name)
    log_tensorboard(curves, tb_dir, prefix=f"drift/{name}")
    return {"drift": {k: c.to_dict() for k, c in curves.items()}, "drift_plot": str(png)}
