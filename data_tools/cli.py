"""`lit-avatar data synth|build|export`: the data set writers and the evaluation-set export.

`build` lives in `data_tools.build` and is imported only when asked for, so `synth` works (and `--help`
stays fast) without the face tooling that building from raw videos needs.
"""
from __future__ import annotations

import importlib
import sys

USAGE = """usage: lit-avatar data {synth,build,export} [options]

  synth   write SynthTalk shards (procedural talking heads with lip-sync ground truth)
  build   build shards from raw talking-head videos
  export  write shard samples as evaluation inputs (real/KEY.mp4 + KEY.json, refs/KEY.png, audio/KEY.wav)

`lit-avatar data COMMAND --help` documents each command's options."""


def main(argv: list[str]) -> int:
    """Dispatch to a subcommand's own `main(argv)`.

    Args:
        argv: arguments after `data`, e.g. ["synth", "--out", "shards/"].
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], list(argv[1:])
    if command == "synth":
        from data_tools.synth import main as synth_main

        return synth_main(rest)
    if command == "export":
        from data_tools.export import main as export_main

        return export_main(rest)
    if command == "build":
        try:
            module = importlib.import_module("data_tools.build")
        except ModuleNotFoundError as err:
            if err.name != "data_tools.build":
                raise
            print("error: `data build` is not available in this install (data_tools/build.py is missing)",
                  file=sys.stderr)
            return 2
        return int(module.main(rest) or 0)
    print(f"error: unknown data command {command!r}; expected 'synth', 'build' or 'export'", file=sys.stderr)
    return 2
