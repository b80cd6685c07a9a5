"""A module that must never be imported by loading a checkpoint: importing it writes the file the test watches
(tests/test_untrusted_checkpoints.py names `checkpoint_payload.Anything` in a generator record)."""
import os
from pathlib import Path

Path(os.environ["LIT_AVATAR_TEST_PAYLOAD"]).touch()


class Anything:
    """The class the record names."""
