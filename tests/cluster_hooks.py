"""Imported by the Ray workers of tests/test_cluster.py (their setup hook): kill one worker mid-source.

The test arms the kill by creating the file named by $LIT_AVATAR_TEST_KILL_FILE; the first worker that then
writes a sample removes the file (so exactly one worker dies, whichever it is) and exits like a killed process.
While a file of that name plus ".always" holds a key fragment, every worker that writes a sample whose key
contains it dies (a source that crashes its worker on every try).
"""
from __future__ import annotations

import os


def setup() -> None:
    from data_tools.shards import ShardSink

    marker = os.environ.get("LIT_AVATAR_TEST_KILL_FILE")
    if not marker or getattr(ShardSink, "_test_kill", False):
        return
    write = ShardSink.write

    def write_then_maybe_die(self, sample):
        write(self, sample)
        try:
            fragment = open(marker + ".always").read().strip()
        except FileNotFoundError:
            fragment = None
        if fragment and fragment in sample["__key__"]:
            os._exit(1)
        try:
            os.unlink(marker)  # only one worker can take the marker
        except FileNotFoundError:
            return
        os._exit(1)  # mid-source: a sample is in a half-written shard, no cleanup runs

    ShardSink.write = write_then_maybe_die
    ShardSink._test_kill = True
