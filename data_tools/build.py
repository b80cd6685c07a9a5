"""`lit-avatar data build`: raw talking-head videos -> webdataset shards of the sample schema.

Why this shape: the sources are sorted and cut into fixed jobs (data_tools.sources), each job writes
its own shards and a done marker (data_tools.shards), and the manifest is assembled from the done
markers. So workers never share a file, a killed build resumes where it stopped, and the result
does not depend on the number of workers or on interruptions.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from data_tools.clips import ClipOptions, SourceReport, process_source
from data_tools.filters import REASONS
from data_tools.parts import parse_part, part_of, part_summary
from data_tools.shards import DONE_SUFFIX, PART_SUFFIX, ShardSink, discard_unfinished, done_path, read_done
from data_tools.sources import ShardJob, Source, plan_jobs, scan_sources
from lit_avatar.command import CommandParser, Namespace
from lit_avatar.data.atomic import write_json_atomic
from lit_avatar.errors import UserError, output_folder

PLAN_FILE = "build_plan.json"
MANIFEST_FILE = "manifest.json"
PLAN_VERSION = 2  # 2: the plan names its jobs (what `data merge` reads)


@dataclass(frozen=True)
class BuildOptions:
    """Everything a worker needs; frozen and picklable so spawned workers get an exact copy.

    Args:
        clip: how clips are cut and checked.
        shard_max_bytes: size bound of one shard part.
        precompute_latents: VAE spec (see data_tools.precompute) or None.
        precompute_audio: audio encoder spec or None.
        threads: torch threads per worker for precomputing.
    """

    clip: ClipOptions = field(default_factory=ClipOptions)
    shard_max_bytes: int = 256 << 20
    precompute_latents: str | None = None
    precompute_audio: str | None = None
    threads: int = 1


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="lit-avatar data build",
        description="Cut raw talking-head videos into face-cropped clips with 16 kHz audio and write "
                    "webdataset shards (train-*.tar, val-*.tar) plus manifest.json. Re-running the same "
                    "command resumes: finished shards are kept, unfinished ones are rebuilt.")
    parser.add_argument("--src", required=True, help="folder scanned recursively for .mp4 .mov .mkv .avi .webm "
                        "(identity = parent folder), or a text file of `path` or `identity<TAB>path` lines")
    parser.add_argument("--out", required=True, help="output folder for shards and manifest.json")
    parser.add_argument("--fps", type=float, default=25.0, help="output frame rate (the model's is 25)")
    parser.add_argument("--size", type=int, default=512, help="side of the square output frames (even)")
    parser.add_argument("--clip-seconds", type=float, default=5.0, help="clip length; the tail is dropped")
    parser.add_argument("--face-detector", default=None, help="local ONNX face detector: SCRFD (insightface "
                        "det_*.onnx) or a model with one [N,5] (x0,y0,x1,y1,score) output; see data_tools/faces.py. "
                        "Default: OpenCV's bundled Haar cascade, LOWER QUALITY (frontal faces only, looser boxes, "
                        "more misses): give an SCRFD file for real data sets")
    parser.add_argument("--no-face", action="store_true", help="centre crops, no face detection")
    parser.add_argument("--face-threshold", type=float, default=0.5, help="detector score threshold")
    parser.add_argument("--face-margin", type=float, default=0.4,
                        help="crop margin per side, fraction of the face size (0.4: crop = 1.8 x face)")
    parser.add_argument("--min-face-px", type=int, default=64, help="reject clips whose face side is smaller")
    parser.add_argument("--detect-frames", type=int, default=5, help="frames per clip the detector sees")
    parser.add_argument("--silence-db", type=float, default=-50.0, help="reject clips with audio RMS below (dBFS)")
    parser.add_argument("--workers", type=int, default=1,
                        help="parallel worker processes (with --engine ray: jobs in flight on the cluster)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: processes on this machine; ray: the same jobs as Ray tasks on a cluster "
                             "(needs `pip install lit-avatar[cluster]` and --out/--src on a shared file system)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="with --engine ray: the cluster to use (`auto`, or HOST:PORT of its head); "
                             "default: a local cluster started for this run")
    parser.add_argument("--part", default=None, metavar="I/N",
                        help="build only part I of N (0-based; jobs I, I+N, ...) into --out, e.g. one SLURM "
                             "array task each; then `lit-avatar data merge --out DIR` writes the manifest")
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="share of identities (not clips) that go to val, by a hash of the identity")
    parser.add_argument("--seed", type=int, default=0, help="salt of the train/val hash")
    parser.add_argument("--shard-max-mb", type=float, default=256.0, help="size bound of one shard file")
    parser.add_argument("--sources-per-job", type=int, default=16,
                        help="videos per shard job (a job writes <split>-<job>-<part>.tar)")
    parser.add_argument("--precompute-latents", default=None, metavar="VAE",
                        help="also store VAE latents: a local WanVAE folder, or patch:SF[:TF[:SCALE]] for PatchVAE")
    parser.add_argument("--precompute-audio", default=None, metavar="ENCODER",
                        help="also store audio features: a local wav2vec2 folder, or `mel` for MelAudioEncoder")
    parser.add_argument("--captions", default=None, metavar="FILE",
                        help="a caption per video, stored as each of its clips' `txt`: JSONL lines {\"source\": "
                             "PATH or \"id\": FILE_STEM, \"text\": CAPTION}, or CSV with header source|id,text "
                             "(paths relative to --src); videos without one get none; entries naming no video "
                             "are reported")
    parser.add_argument("--dataset-name", default=None, help="`source` field of the samples (default: --src name)")
    parser.add_argument("--crf", type=int, default=18, help="x264 quality of the stored clips")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def options_from_args(args: Namespace) -> BuildOptions:
    """Validate the arguments early, each error naming its option."""
    _check(args.fps > 0, f"--fps {args.fps}: expected a positive frame rate")
    _check(args.size >= 16 and args.size % 2 == 0, f"--size {args.size}: expected an even size >= 16")
    _check(args.clip_seconds > 0 and round(args.clip_seconds * args.fps) >= 1,
           f"--clip-seconds {args.clip_seconds}: expected a positive length of at least one frame")
    _check(0.0 <= args.val_fraction <= 1.0, f"--val-fraction {args.val_fraction}: expected a value in [0, 1]")
    _check(args.workers >= 1, f"--workers {args.workers}: expected >= 1")
    _check(args.ray_address is None or args.engine == "ray", "--ray-address: expected --engine ray with it")
    _check(args.shard_max_mb > 0, f"--shard-max-mb {args.shard_max_mb}: expected > 0")
    _check(args.sources_per_job >= 1, f"--sources-per-job {args.sources_per_job}: expected >= 1")
    _check(args.detect_frames >= 1, f"--detect-frames {args.detect_frames}: expected >= 1")
    _check(0 < args.face_threshold <= 1, f"--face-threshold {args.face_threshold}: expected a value in (0, 1]")
    _check(args.face_margin >= 0, f"--face-margin {args.face_margin}: expected >= 0")
    _check(0 <= args.crf <= 51, f"--crf {args.crf}: expected 0..51")
    if args.no_face:
        _check(args.face_detector is None, "--face-detector and --no-face: expected one of them, not both")
    else:
        from data_tools.faces import load_face_detector

        if args.face_detector is not None:
            _check(Path(args.face_detector).is_file(), f"--face-detector {args.face_detector}: file not found")
        else:
            print("no --face-detector: using OpenCV's Haar cascade (lower quality than SCRFD)", file=sys.stderr)
        load_face_detector(args.face_detector)  # a file that is not a usable model fails here, once
    from data_tools.precompute import check_spec

    if args.precompute_latents:
        check_spec(args.precompute_latents, "--precompute-latents")
    if args.precompute_audio:
        check_spec(args.precompute_audio, "--precompute-audio")
    dataset = args.dataset_name or Path(args.src).resolve().stem
    clip = ClipOptions(fps=args.fps, size=args.size, clip_seconds=args.clip_seconds, dataset=dataset,
                       no_face=args.no_face,
                       face_detector=str(Path(args.face_detector).resolve()) if args.face_detector else None,
                       face_threshold=args.face_threshold, face_margin=args.face_margin,
                       min_face_px=args.min_face_px, detect_frames=args.detect_frames,
                       silence_db=args.silence_db, crf=args.crf)
    return BuildOptions(clip=clip, shard_max_bytes=int(args.shard_max_mb * (1 << 20)),
                        precompute_latents=args.precompute_latents, precompute_audio=args.precompute_audio,
                        threads=1 if args.workers > 1 else max(1, (os.cpu_count() or 1)))


# ----------------------------------------------------------------------------------------- the worker side

PRECOMPUTE_BATCH = 8  # clips per encoder call (a Ray actor gets them in one message)
PrecomputeBatch = Callable[[list], tuple[list, Exception | None]]

_worker_state: dict[str, Any] = {}


def _init_worker(options: BuildOptions, precompute: PrecomputeBatch | None = None) -> None:
    """Load the detector and precompute models once per process (spawn-safe: called in the child).

    Args:
        options: the build's options.
        precompute: a batch encoder to use instead of loading the models here (the Ray engine's actors).
    """
    from data_tools.faces import load_face_detector
    from data_tools.precompute import Precomputer, precompute_batch

    _worker_state.clear()
    clip = options.clip
    _worker_state["detector"] = None if clip.no_face else load_face_detector(
        clip.face_detector, score_threshold=clip.face_threshold)
    if precompute is None and (options.precompute_latents or options.precompute_audio):
        model = Precomputer(options.precompute_latents, options.precompute_audio, threads=options.threads)
        precompute = partial(precompute_batch, model)
    _worker_state["precompute"] = precompute
    _worker_state["options"] = options


def _precompute_and_write(batch: list, marks: list, report: SourceReport, sink: ShardSink,
                          precompute: PrecomputeBatch) -> None:
    """Encode a batch of one source's clips and write them; on a failure, the report goes back to how it
    stood when the failing clip was cut (as if the clips had been encoded one by one) and the error is raised."""
    if not batch:
        return
    done, error = precompute(batch)
    for sample in done:
        sink.write(sample)
    if error is not None:
        report.clips, report.seconds, rejected = marks[len(done)]
        del report.rejected_clips[rejected:]
        raise error


def _write_source(source: Source, report: SourceReport, sink: ShardSink, options: BuildOptions) -> None:
    """Cut one source into samples, precompute them in batches if asked, and write them in clip order."""
    samples = process_source(source, report, options.clip, _worker_state["detector"])
    precompute = _worker_state["precompute"]
    if precompute is None:
        for sample in samples:
            sink.write(sample)
        return
    batch: list = []
    marks: list = []  # the report as it stood when each clip of the batch was cut
    while True:
        try:
            sample = next(samples, None)
        except Exception:
            _precompute_and_write(batch, marks, report, sink, precompute)  # clips cut before the failure stand
            raise
        if sample is None or len(batch) == PRECOMPUTE_BATCH:
            _precompute_and_write(batch, marks, report, sink, precompute)
            batch, marks = [], []
        if sample is None:
            return
        batch.append(sample)
        marks.append((report.clips, report.seconds, len(report.rejected_clips)))


def run_job(job: ShardJob, out_dir: str) -> dict[str, Any]:
    """Write one job's shards and its done marker; returns the marker's content.

    Args:
        job: the sources to write.
        out_dir: the build's output folder.
    """
    options: BuildOptions = _worker_state["options"]
    sink = ShardSink(Path(out_dir), job.prefix, options.shard_max_bytes)
    reports = []
    for source in job.sources:
        report = SourceReport(file=source.path, identity=source.identity, split=job.split)
        try:
            _write_source(source, report, sink, options)
        except UserError as err:  # a bad file must not stop a long build
            report.reason, report.detail = "broken", str(err)
        except Exception as err:  # any failure: recorded with its type in the manifest
            report.reason, report.detail = "error", f"{type(err).__name__}: {err}"
        report.finish()
        reports.append(report.as_dict())
    done = {"job": job.prefix, "split": job.split, "sources": [s.name for s in job.sources],
            "parts": sink.close(), "reports": reports}
    write_json_atomic(done_path(Path(out_dir), job.prefix), done, durable=True)
    return done


def _run_job_in_worker(args: tuple[ShardJob, str]) -> dict[str, Any]:
    return run_job(*args)


# ----------------------------------------------------------------------------------------- the main side

def _fingerprint(options: BuildOptions, jobs: list[ShardJob], captions: dict[str, Any] | None) -> dict[str, Any]:
    """What must not change between a build and its resumption (and what `data merge` reads back); with
    --captions, their summary (`captions_summary`: a digest of every caption) too."""
    plan = [(job.prefix, [s.name for s in job.sources]) for job in jobs]
    digest = hashlib.sha256(json.dumps(plan).encode("utf-8")).hexdigest()
    fingerprint = {"version": PLAN_VERSION, "options": data_settings(options), "plan_sha256": digest,
                   "jobs": [job.prefix for job in jobs]}
    if captions is not None:
        fingerprint["captions"] = captions
    return fingerprint


def data_settings(options: BuildOptions) -> dict[str, Any]:
    """The options that shape the data (not `threads`, which only sets how fast it is made)."""
    settings = asdict(options)
    settings.pop("threads")
    return settings


def _check_plan(out: Path, fingerprint: dict[str, Any]) -> None:
    path = out / PLAN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old != fingerprint:
            raise UserError(f"--out {out}: holds a build made with other options or sources ({PLAN_FILE}); "
                            "expected the same command to resume it, or an empty folder")
    else:
        write_json_atomic(path, fingerprint, durable=True)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="data build", disable=not enabled, dynamic_ncols=True)


def assemble_manifest(out: Path, prefixes: list[str], settings: dict[str, Any], seconds: float,
                      captions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts, hours, identities, shards and every rejection, from the done markers.

    Args:
        out: the build folder.
        prefixes: the plan's jobs, in plan order.
        settings: `data_settings` of the build options.
        seconds: wall-clock time of this run.
        captions: the plan's captions summary (with --captions), kept in the manifest.
    """
    files, shards = [], []
    for prefix in prefixes:
        done = read_done(out, prefix)
        assert done is not None, prefix
        files.extend(done["reports"])
        shards.extend({"split": done["split"], **part} for part in done["parts"])
    clip = settings["clip"]
    per_clip = round(clip["clip_seconds"] * clip["fps"]) / clip["fps"]
    splits: dict[str, Any] = {}
    for split in ("train", "val"):
        mine = [f for f in files if f["split"] == split]
        identities: dict[str, int] = {}
        for f in mine:
            if f["clips"]:
                identities[f["identity"]] = identities.get(f["identity"], 0) + f["clips"]
        clips = sum(f["clips"] for f in mine)
        splits[split] = {"files": len(mine), "clips": clips, "hours": clips * per_clip / 3600,
                         "identities": dict(sorted(identities.items())),
                         "shards": [s["file"] for s in shards if s["split"] == split]}
    rejected_files = [{"file": f["file"], "reason": f["reason"], "detail": f["detail"]}
                      for f in files if f["status"] == "rejected"]
    rejected_clips = [{"file": f["file"], **c} for f in files for c in f["rejected_clips"]]
    by_reason = {r: 0 for r in REASONS}
    for item in rejected_files:
        by_reason[item["reason"]] += 1
    clip_reasons = {r: 0 for r in REASONS}
    for item in rejected_clips:
        clip_reasons[item["reason"]] += 1
    manifest = {
        "counts": {"files": len(files), "files_used": len(files) - len(rejected_files),
                   "files_rejected": len(rejected_files),
                   "clips": sum(f["clips"] for f in files), "clips_rejected": len(rejected_clips),
                   "hours": sum(f["clips"] for f in files) * per_clip / 3600,
                   "files_rejected_by_reason": {k: v for k, v in by_reason.items() if v},
                   "clips_rejected_by_reason": {k: v for k, v in clip_reasons.items() if v}},
        "splits": splits,
        "shards": shards,
        "rejected_files": rejected_files,
        "rejected_clips": rejected_clips,
        "files": files,
        "reasons": REASONS,
        "options": settings,
        "last_run_seconds": round(seconds, 3),
    }
    if captions is not None:
        manifest["captions"] = captions
    return manifest


def _run_local(todo: list[ShardJob], out: Path, options: BuildOptions, workers: int, on_done) -> None:
    """The jobs in this process (1 worker) or in a pool of spawned processes."""
    if workers == 1:
        _init_worker(options)
        for job in todo:
            on_done(run_job(job, str(out)))
        return
    import multiprocessing as mp

    context = mp.get_context("spawn")  # fork would copy onnxruntime/torch thread pools
    with context.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(options,)) as pool:
        for done in pool.imap_unordered(_run_job_in_worker, [(job, str(out)) for job in todo]):
            on_done(done)


def _run(todo: list[ShardJob], out: Path, options: BuildOptions, args: Namespace, on_done) -> None:
    if not todo:
        return
    if args.engine == "ray":
        from data_tools.ray_engine import run_on_ray

        run_on_ray(todo, out, options, args.workers, on_done, address=args.ray_address)
    else:
        _run_local(todo, out, options, args.workers, on_done)


def _captioned(sources: list[Source], args: Namespace) -> tuple[list[Source], dict[str, Any] | None]:
    """The sources with their --captions, and the captions summary; entries naming no video are reported."""
    if args.captions is None:
        return sources, None
    from data_tools.captions import attach_captions, captions_summary, read_captions

    sources, unknown = attach_captions(sources, read_captions(args.captions), args.src, args.captions)
    summary = captions_summary(args.captions, sources, unknown)
    if unknown:
        first = unknown[0]
        print(f"data build: --captions {args.captions}: {len(unknown)} entries name no video under --src (first: "
              f"line {first.line}, {first.kind} {first.key!r}); listed in manifest.json under captions.unknown",
              file=sys.stderr)
    print(f"data build: captions for {summary['sources_captioned']} of {len(sources)} videos", file=sys.stderr)
    return sources, summary


def build(argv: list[str]) -> dict[str, Any]:
    """Run a build (or resume one, or one part of one) and return the manifest (for a part: its summary).

    Args:
        argv: command-line arguments (see `--help`).
    """
    args = build_parser().parse(argv)
    part = parse_part(args.part) if args.part else None
    if args.engine == "ray":
        from data_tools.ray_engine import import_ray

        import_ray()  # a missing extra fails before any work
    sources = scan_sources(args.src)
    out = output_folder(args.out, "--out")
    options = options_from_args(args)
    sources, captions = _captioned(sources, args)
    jobs = plan_jobs(sources, args.val_fraction, args.seed, args.sources_per_job)
    mine = part_of(jobs, part)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(options, jobs, captions)
    _check_plan(out, fingerprint)
    todo = [job for job in mine if read_done(out, job.prefix) is None]
    # other parts may be writing into the same folder: a part removes only its own leftovers
    discard_unfinished(out, [job.prefix for job in todo], all_temps=part is None)
    started = time.perf_counter()
    bar = _progress(sum(len(j.sources) for j in mine), not args.no_progress)
    bar.update(sum(len(j.sources) for j in mine if j not in todo))
    _run(todo, out, options, args, lambda done: bar.update(len(done["sources"])))
    bar.close()
    if part is not None:
        return part_summary(out, jobs, mine, part)
    manifest = assemble_manifest(out, fingerprint["jobs"], fingerprint["options"], time.perf_counter() - started,
                                 captions)
    write_json_atomic(out / MANIFEST_FILE, manifest, durable=True)
    return manifest


def report_manifest(manifest: dict[str, Any]) -> None:
    """The one-line summary of a finished build (or merge) on stderr."""
    counts = manifest["counts"]
    print(f"data build: {counts['clips']} clips ({counts['hours'] * 60:.1f} min) from {counts['files_used']} of "
          f"{counts['files']} files; {counts['files_rejected']} files and {counts['clips_rejected']} clips "
          f"rejected (see manifest.json)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lit-avatar data build` (data_tools.cli dispatches here).

    Args:
        argv: arguments after `data build`.
    """
    result = build(list(sys.argv[1:] if argv is None else argv))
    if "part" in result:
        print(f"data build: part {result['part']} done ({result['jobs']} jobs); {result['jobs_left']} jobs of "
              f"other parts left; when all parts are done: lit-avatar data merge --out {result['out']}",
              file=sys.stderr)
    else:
        report_manifest(result)
    return 0


__all__ = ["BuildOptions", "build", "build_parser", "main", "run_job", "assemble_manifest",
           "DONE_SUFFIX", "PART_SUFFIX"]
