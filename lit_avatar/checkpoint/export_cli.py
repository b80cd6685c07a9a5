"""`lit-avatar export`: a checkpoint's generator as a folder to share (generator.json + model.safetensors).

    lit-avatar export --ckpt runs/.../last.ckpt --out student/
    lit-avatar generate --ckpt student/ --audio speech.wav --ref face.png --out video.mp4
"""
from __future__ import annotations

from lit_avatar.command import CommandParser


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="lit-avatar export",
        description="Write a checkpoint's generator as a folder without pickle: generator.json (the record of "
                    "networks and rollout options) and model.safetensors (the weights). generate and serve read "
                    "the folder in place of the .ckpt; share the folder, not the .ckpt.")
    parser.add_argument("--ckpt", required=True, help="checkpoint with a lit_avatar generator record")
    parser.add_argument("--out", required=True, help="new (or empty) folder to write")
    return parser


def main(argv: list[str]) -> int:
    """Run `lit-avatar export` (see --help)."""
    args = build_parser().parse(argv)
    from lit_avatar.checkpoint.export import export_generator
    from lit_avatar.checkpoint.read import checkpoint_path

    checkpoint_path(args.ckpt, "a checkpoint with a lit_avatar generator record")
    out = export_generator(args.ckpt, args.out)
    print(f"wrote {out}/ (generator.json, model.safetensors): share this folder; generate and serve take it as --ckpt")
    return 0
