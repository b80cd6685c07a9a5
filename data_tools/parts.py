"""`--part I/N` and `lit-avatar data merge`: a build cut into parts that run anywhere, then joined.

Why jobs I, I+N, ...: the plan (data_tools.sources) is a pure function of the sources and the options,
so every part computes the same plan and takes a disjoint, balanced share of its jobs without talking
to the others (a SLURM array needs nothing more). The parts write into one --out; each job's shards and
done marker are exactly what the one-shot build writes, so `data merge` only assembles the manifest from
the done markers, and the result equals the one-shot build.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from data_tools.shards import read_done
from data_tools.sources import ShardJob
from lit_avatar.command import CommandParser
from lit_avatar.data.atomic import write_json_atomic
from lit_avatar.errors import UserError


def parse_part(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), with 0 <= I < N.

    Args:
        text: the value of --part.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise UserError(f"--part {text}: expected I/N with 0 <= I < N, e.g. 0/4 (SLURM: "
                        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-3)")
    return int(match[1]), int(match[2])


def part_of(jobs: list[ShardJob], part: tuple[int, int] | None) -> list[ShardJob]:
    """The jobs part (I, N) builds: I, I+N, I+2N, ... of the plan (all of them without a part)."""
    if part is None:
        return list(jobs)
    index, count = part
    return jobs[index::count]


def part_summary(out: Path, jobs: list[ShardJob], mine: list[ShardJob], part: tuple[int, int]) -> dict[str, Any]:
    """What a part run reports: its jobs, and how many jobs of the whole plan are not done yet."""
    left = sum(read_done(out, job.prefix) is None for job in jobs)
    return {"part": f"{part[0]}/{part[1]}", "jobs": len(mine), "jobs_left": left, "out": str(out)}


def merge_parser() -> CommandParser:
    parser = CommandParser(
        prog="lit-avatar data merge",
        description="Join the parts of a build (`data build --part I/N`, all into one --out) into manifest.json "
                    "and its train/val split, as the one-shot build writes them.")
    parser.add_argument("--out", required=True, help="the folder the parts were built into")
    return parser


def _read_plan(out: Path) -> dict[str, Any]:
    from data_tools.build import PLAN_FILE, PLAN_VERSION

    path = out / PLAN_FILE
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--out {out}: no {PLAN_FILE}; expected a folder that `data build --part I/N` wrote") from None
    except (OSError, ValueError) as err:
        raise UserError(f"--out {out}: {PLAN_FILE} is unreadable ({err}); expected the file a build wrote") from None
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION or "jobs" not in plan:
        raise UserError(f"--out {out}: {PLAN_FILE} is of another version; expected version {PLAN_VERSION} "
                        "(rebuild the parts with this version)")
    return plan


def merge(argv: list[str]) -> dict[str, Any]:
    """Write manifest.json from the done markers of every part; returns it.

    Args:
        argv: command-line arguments (see `--help`).
    """
    from data_tools.build import MANIFEST_FILE, assemble_manifest

    args = merge_parser().parse(argv)
    out = Path(args.out)
    if not out.is_dir():
        raise UserError(f"--out {out}: not found; expected the folder the parts were built into")
    started = time.perf_counter()
    plan = _read_plan(out)
    missing = [prefix for prefix in plan["jobs"] if read_done(out, prefix) is None]
    if missing:
        count = len(plan["jobs"])
        raise UserError(f"--out {out}: {len(missing)} of {count} jobs are not done (e.g. {missing[0]}, job "
                        f"{plan['jobs'].index(missing[0])} of the plan); expected every part finished: rerun the "
                        "part that holds it (job J belongs to part J mod N)")
    manifest = assemble_manifest(out, plan["jobs"], plan["options"], time.perf_counter() - started,
                                 plan.get("captions"))
    write_json_atomic(out / MANIFEST_FILE, manifest, durable=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lit-avatar data merge`.

    Args:
        argv: arguments after `data merge`.
    """
    from data_tools.build import report_manifest

    report_manifest(merge(list(sys.argv[1:] if argv is None else argv)))
    return 0
