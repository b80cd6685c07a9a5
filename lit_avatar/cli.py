"""`lit-avatar` entry point.

`fit`, `validate`, `test`, `predict` go to LightningCLI; the other commands are small argparse
programs that live beside the code they drive and are imported lazily, so `--help` stays fast.
"""
from __future__ import annotations

import importlib
import sys

from lit_avatar.errors import UserError

# command -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS = {
    "fit": "lit_avatar.lightning_cli:main",
    "validate": "lit_avatar.lightning_cli:main",
    "test": "lit_avatar.lightning_cli:main",
    "predict": "lit_avatar.lightning_cli:main",
    "data": "data_tools.cli:main",
    "generate": "lit_avatar.inference.generate_cli:main",
    "eval": "eval.cli:main_eval",
    "table": "eval.cli:main_table",
    "bench": "bench.cli:main",
    "serve": "lit_avatar.serve.cli:main",
}

USAGE = """usage: lit-avatar COMMAND [options]

commands:
  fit | validate     train or validate with LightningCLI (--config experiments/....yaml, stackable)
  data synth|build   write SynthTalk shards, or build shards from raw talking-head videos
  generate           stream a video from audio + a reference image with a trained checkpoint
  eval               compute FID, FVD, Sync-C/D, CSIM, SynthSync and drift on videos on disk
  table              build the paper's comparison and ablation tables from results files
  bench              run benchmarks (e.g. `lit-avatar bench stream`)
  serve              a live avatar in the browser: microphone in, video out (http://127.0.0.1:8080/)

`lit-avatar COMMAND --help` documents each command."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[command].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    rest = argv if module_name == "lit_avatar.lightning_cli" else argv[1:]
    try:
        return int(func(rest) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
