"""The checkpoint format, in one place: training writes it, inference and `lit-avatar export` read it.

A checkpoint that can generate carries a generator record (`checkpoint["lit_avatar"]`, docs/INTERFACES.md):
plain specs of the networks, the rollout options and where the generator's weights are. Everything read is
data: torch.load runs with weights_only=True, and the record may name only allow-listed classes with plain
arguments (allow.py), checked before anything is imported. `lit-avatar export` writes the pickle-free form
(generator.json + model.safetensors) that generate and serve read in place of the .ckpt.

    record.py  describe / generator_record / check_record / instantiate (what the record says)
    allow.py   the allow-list
    read.py    reading a .ckpt or an exported folder into a checked record + weights (nothing built)
    load.py    building the generator (load_generator) or one stage's network (load_stage_weights)
    export.py  writing the exported folder; export_cli.py is `lit-avatar export`
"""
from __future__ import annotations

from lit_avatar.checkpoint.export import export_generator
from lit_avatar.checkpoint.load import (
    GeneratorBundle,
    build_generator,
    load_generator,
    load_stage_weights,
    require_causal,
)
from lit_avatar.checkpoint.read import GeneratorSource, checkpoint_path, read_generator
from lit_avatar.checkpoint.record import (
    CAUSAL_KINDS,
    KINDS,
    RECORD_KEY,
    check_record,
    describe,
    generator_record,
    instantiate,
    rollout_options_from,
    video_size_of,
)

__all__ = ["CAUSAL_KINDS", "KINDS", "RECORD_KEY", "GeneratorBundle", "GeneratorSource", "build_generator",
           "check_record", "checkpoint_path", "describe", "export_generator", "generator_record", "instantiate",
           "load_generator", "load_stage_weights", "read_generator", "require_causal", "rollout_options_from",
           "video_size_of"]
