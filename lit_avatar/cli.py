"""`lit-avatar` entry point.

`fit`, `validate`, `test`, `predict` go to LightningCLI; every other command is a jsonargparse program
(lit_avatar.command.CommandParser) that lives beside the code it drives and is imported only when run,
so `--help` stays fast. Every command takes `--config FILE` and `--print_config`.
"""
from __future__ import annotations

import sys

from lit_avatar.command import dispatch
from lit_avatar.errors import UserError

# command -> ("module:function", description); each function takes argv and returns an exit code.
COMMANDS = {
    "fit": ("lit_avatar.lightning_cli:fit", "train with LightningCLI (--config experiments/....yaml, stackable)"),
    "validate": ("lit_avatar.lightning_cli:validate", "run the validation loop of a config/checkpoint"),
    "test": ("lit_avatar.lightning_cli:test", "run the test loop of a config/checkpoint"),
    "predict": ("lit_avatar.lightning_cli:predict", "run the predict loop of a config/checkpoint"),
    "data": ("data_tools.cli:main", "data sets: synth (SynthTalk shards), build (shards from raw talking-head "
             "videos), export (shard samples as evaluation inputs)"),
    "generate": ("lit_avatar.inference.generate_cli:main",
                 "stream a video from audio + a reference image with a trained checkpoint"),
    "eval": ("eval.cli:main_eval", "compute FID, FVD, Sync-C/D, CSIM, SynthSync and drift on videos on disk"),
    "table": ("eval.cli:main_table", "build the paper's comparison and ablation tables from results files"),
    "bench": ("bench.cli:main", "run benchmarks: stream, train, gpu, build"),
    "serve": ("lit_avatar.serve.cli:main", "a live avatar in the browser: microphone in, video out"),
    "export": ("lit_avatar.checkpoint.export_cli:main", "a checkpoint's generator as a folder to share: "
               "generator.json + model.safetensors, no pickle"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return dispatch("lit-avatar", COMMANDS, argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
