"""`lit-avatar data precompute --shards SPEC --text-encoder PATH`: fill the prompt cache for a data set.

Every unique caption (`txt` member) of the shards goes once through umT5 into the PromptEncoder's disk cache,
keyed by the encoder's identity (its files and max_length) and the text. A training run whose `text_encoder`
names the same folder and max_length then finds every caption there and never loads umT5 (for Wan's
umT5-XXL, ~11 GB in bf16) beside the DiT. Samples whose caption is not UTF-8 are skipped and counted.
"""
from __future__ import annotations

import sys
import tarfile
from collections.abc import Iterator
from typing import Any

from lit_avatar.command import CommandParser, device_option
from lit_avatar.data.schema import CAPTION_EXT, SampleError, decode_caption
from lit_avatar.data.shards import expand_shards
from lit_avatar.errors import UserError


def precompute_parser() -> CommandParser:
    parser = CommandParser(
        prog="lit-avatar data precompute",
        description="Encode every unique caption of the shards with the text encoder into the prompt cache, so "
                    "that training finds them there and never loads umT5 (give the text_encoder path and "
                    "max_length of the training YAML).")
    parser.add_argument("--shards", required=True, help="shards: a path, glob, brace list or ::-joined specs")
    parser.add_argument("--text-encoder", required=True, metavar="PATH",
                        help="local umT5 folder (a Wan pipeline folder with text_encoder/ + tokenizer/, or one folder)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per prompt (Wan: 512)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="umT5's weights dtype (bfloat16 for umT5-XXL on a GPU)")
    parser.add_argument("--cache-dir", default=None,
                        help="the prompt cache (default: $LIT_AVATAR_PROMPT_CACHE or ~/.cache/lit_avatar/prompts)")
    parser.add_argument("--batch-size", type=int, default=16, help="captions per umT5 call")
    parser.add_argument("--device", default="cpu", help="where umT5 runs: cpu or cuda[:N]")
    return parser


def shard_captions(shards: list[str]) -> Iterator[tuple[str, str | None]]:
    """(sample key, caption or None when it is not UTF-8) of every `txt` member, in shard order."""
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    key, _, ext = member.name.rpartition("/")[2].partition(".")
                    if ext != CAPTION_EXT or not member.isfile():
                        continue
                    data = tar.extractfile(member).read()
                    try:
                        yield key, decode_caption(data, key)
                    except SampleError:
                        yield key, None
        except (OSError, tarfile.TarError) as err:
            raise UserError(f"--shards: cannot read shard {shard} ({type(err).__name__}: {err})") from None


def precompute_prompts(argv: list[str]) -> dict[str, Any]:
    """Fill the cache; returns the counts (captions, unique, encoded, already cached, skipped).

    Args:
        argv: command-line arguments (see `--help`).
    """
    from lit_avatar.prompts import PromptEncoder

    args = precompute_parser().parse(argv)
    if args.max_length < 1 or args.batch_size < 1:
        raise UserError(f"--max-length {args.max_length} / --batch-size {args.batch_size}: expected >= 1")
    device = device_option(args.device)
    try:
        encoder = PromptEncoder(args.text_encoder, max_length=args.max_length, dtype=args.dtype,
                                cache_dir=args.cache_dir)
    except UserError as err:
        raise UserError(f"--text-encoder {err}") from None
    shards = expand_shards(args.shards, "--shards")
    captions, skipped = [], 0
    for _, caption in shard_captions(shards):
        if caption is None:
            skipped += 1
        else:
            captions.append(caption)
    unique = list(dict.fromkeys(captions))
    for start in range(0, len(unique), args.batch_size):
        encoder(unique[start:start + args.batch_size], device=device)
    return {"shards": len(shards), "captions": len(captions), "unique": len(unique), "encoded": encoder.encoded,
            "cached_before": len(unique) - encoder.encoded, "skipped": skipped,
            "cache_dir": str(encoder.cache.folder), "identity": encoder.identity}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `lit-avatar data precompute`.

    Args:
        argv: arguments after `data precompute`.
    """
    result = precompute_prompts(list(sys.argv[1:] if argv is None else argv))
    print(f"data precompute: {result['unique']} unique captions in {result['captions']} samples of "
          f"{result['shards']} shards; {result['encoded']} encoded, {result['cached_before']} already cached"
          f"{'; ' + str(result['skipped']) + ' captions not UTF-8, skipped' if result['skipped'] else ''} "
          f"-> {result['cache_dir']}", file=sys.stderr)
    return 0
