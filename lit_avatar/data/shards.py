"""Shard specs -> shard lists, failing early and clearly on paths that match nothing."""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from lit_avatar.errors import UserError

_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")


def expand_shards(spec: str | Sequence[str], argument: str = "shards") -> list[str]:
    """Expand globs, brace lists ("train-{000000..000009}.tar") and "::"-joined specs into sorted paths.

    Args:
        spec: one spec string, or a list of them.
        argument: the argument name errors mention (e.g. "train_shards").

    Raises:
        UserError: a glob matches nothing, or a local path does not exist.
    """
    import braceexpand  # a webdataset dependency

    parts = [spec] if isinstance(spec, str) else list(spec)
    specs = [piece for part in parts for piece in str(part).split("::") if piece]
    if not specs:
        raise UserError(f"{argument}: empty; expected a shard path, glob or brace list")
    shards: list[str] = []
    for item in specs:
        for path in braceexpand.braceexpand(os.path.expanduser(item)):
            if path.startswith(_REMOTE_PREFIXES):
                shards.append(path)
            elif glob.has_magic(path):
                matches = sorted(glob.glob(path))
                if not matches:
                    raise UserError(f"{argument}: glob {path!r} matches no files")
                shards.extend(matches)
            elif not os.path.isfile(path):
                raise UserError(f"{argument}: shard {path!r} does not exist")
            else:
                shards.append(path)
    return list(dict.fromkeys(shards))  # drop duplicates, keep order
