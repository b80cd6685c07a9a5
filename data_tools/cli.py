"""`lit-avatar data synth|build|merge|export`: the data set writers and the evaluation-set export.

Each subcommand lives beside its code and is imported only when asked for, so `synth` works (and `--help`
stays fast) without the face tooling that building from raw videos needs.
"""
from __future__ import annotations

from lit_avatar.command import dispatch

COMMANDS = {
    "synth": ("data_tools.synth:main", "write SynthTalk shards (procedural talking heads with lip-sync ground truth)"),
    "build": ("data_tools.build:main", "build shards from raw talking-head videos"),
    "merge": ("data_tools.parts:main", "join the parts of a build (`data build --part I/N`) into its manifest"),
    "precompute": ("data_tools.prompt_cache:main", "encode every unique caption of shards into the prompt cache "
                   "(training then never loads umT5)"),
    "export": ("data_tools.export:main", "write shard samples as evaluation inputs (real/KEY.mp4 + KEY.json, "
               "refs/KEY.png, audio/KEY.wav)"),
}


def main(argv: list[str]) -> int:
    """`lit-avatar data COMMAND ...`; returns the exit code."""
    return dispatch("lit-avatar data", COMMANDS, argv)
