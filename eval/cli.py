"""Command lines `lit-avatar eval` and `lit-avatar table` (registered in lit_avatar/cli.py)."""
from __future__ import annotations

import shlex

from lit_avatar.command import CommandParser
from lit_avatar.errors import UserError


def _eval_parser() -> CommandParser:
    from eval.evaluate import ALL_METRICS, DETECTOR, WEIGHTS

    layout = ", ".join(f"{m}: {p}" for m, p in WEIGHTS.items())
    p = CommandParser(
        prog="lit-avatar eval",
        description="Score generated videos against real ones (matched by file name) and write results.json. "
        f"Weights are read from --weights-dir ({layout}; optional face detector {DETECTOR}); a metric whose "
        f"file is missing is skipped with a message. Without {DETECTOR}, faces come from OpenCV's bundled Haar "
        "cascade: LOWER QUALITY (frontal faces only, looser boxes, no landmarks). The results JSON names each "
        "metric's protocol and its clip/frame counts, and per video the frames without a face. "
        "A sidecar X.json beside X.mp4 may give "
        '{"mouth_box": [x0,y0,x1,y1], "face_box": [...]} normalised to [0,1].',
    )
    p.add_argument("--gen", required=True, help="folder of generated videos (X.mp4)")
    p.add_argument("--real", help="folder of real videos with the same names (needed by fid, fvd)")
    p.add_argument("--refs", help="folder of reference images X.png/X.jpg (CSIM); default: real frame 0")
    p.add_argument("--audio", help="folder of X.wav; default: the generated video's own audio stream")
    p.add_argument("--metrics", default=",".join(ALL_METRICS), help="comma-separated subset of the default")
    p.add_argument("--weights-dir", help="folder holding the metric networks' weight files")
    p.add_argument("--out", required=True, help="results JSON path (written atomically)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate videos are resampled to (default 25)")
    p.add_argument("--window", type=float, default=10.0, help="drift window length in seconds (default 10)")
    p.add_argument("--fid-frame-stride", type=int, default=1, help="use every k-th frame for FID (default 1: all)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per network forward")
    p.add_argument("--device", default="cpu", help="torch device for the networks (cpu, cuda, ...)")
    p.add_argument("--drift-dir", help="where drift PNGs go (default: OUT's folder/<out stem>_drift)")
    p.add_argument("--tensorboard-dir", help="TensorBoard log dir for drift scalars (default: DRIFT_DIR/tensorboard)")
    p.add_argument("--sync-protocol", choices=("syncnet_python", "per_frame"), default="syncnet_python",
                   help="SyncNet face crops: syncnet_python's crop_video (13-frame median filter of the box track, "
                   "int() edges; the published protocol, default) or per_frame (each frame's box, rounded)")
    p.add_argument("--fvd-protocol", choices=("stylegan-v", "all-clips"), default="stylegan-v",
                   help="FVD clips: stylegan-v (one 16-frame clip per video, whole frame resized to 224; default) "
                   "or all-clips (every 16-frame clip, short side 224 + centre crop)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main_eval(argv: list[str]) -> int:
    """`lit-avatar eval ...`; returns the exit code."""
    from eval.evaluate import EvalOptions, parse_metrics, run_eval

    args = _eval_parser().parse(argv)
    if args.fps <= 0:
        raise UserError(f"--fps: expected a positive frame rate, got {args.fps}")
    if args.fid_frame_stride < 1 or args.batch_size < 1:
        raise UserError("--fid-frame-stride and --batch-size: expected integers >= 1")
    opts = EvalOptions(
        gen=args.gen, out=args.out, real=args.real, refs=args.refs, audio=args.audio,
        metrics=parse_metrics(args.metrics), weights_dir=args.weights_dir, fps=args.fps, window=args.window,
        fid_frame_stride=args.fid_frame_stride, batch_size=args.batch_size, device=args.device,
        drift_dir=args.drift_dir, tensorboard_dir=args.tensorboard_dir,
        sync_protocol=args.sync_protocol, fvd_protocol=args.fvd_protocol,
        command="lit-avatar eval " + shlex.join(argv), progress=not args.no_progress,
    )
    results = run_eval(opts)
    agg = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in results["aggregate"].items())
    print(f"wrote {args.out}: {agg}")
    return 0


def _table_parser() -> CommandParser:
    p = CommandParser(
        prog="lit-avatar table",
        description="Build a comparison or ablation table (Markdown, or LaTeX for a .tex --out) from results "
        "files listed in a YAML config (experiments/tables/*.yaml). Best values are bold; arrows give the "
        "better direction.",
        options_file="--options",  # --config is the table YAML itself
    )
    p.add_argument("--config", dest="table", required=True, help="table YAML (experiments/tables/NAME.yaml)")
    p.add_argument("--out", required=True, help="output .md or .tex (written atomically)")
    p.add_argument("--run", action="store_true",
                   help="for rows whose results file is missing, run the row's generate/eval commands first")
    return p


def main_table(argv: list[str]) -> int:
    """`lit-avatar table ...`; returns the exit code."""
    from eval.tables import build_table

    args = _table_parser().parse(argv)
    text = build_table(args.table, args.out, run=args.run, command="lit-avatar table " + shlex.join(argv))
    print(f"wrote {args.out} ({text.count(chr(10))} lines)")
    return 0
