"""lit_avatar.caption_study: the shuffled-caption control, the choice of other captions, the summary, and the whole
runner at toy size (both teachers trained through experiments/teacher/synthtalk_captions.yaml)."""
from __future__ import annotations

import json
import tarfile
from collections import Counter

import numpy as np
import pytest

from lit_avatar import caption_study as study


def _members(path):
    with tarfile.open(path) as handle:
        return {m.name: handle.extractfile(m).read() for m in handle.getmembers()}


def test_shuffled_copy_permutes_only_the_captions(tmp_path):
    from data_tools.synth import write_synthtalk

    write_synthtalk(tmp_path / "data", clips=12, seconds=0.2, shards=2, size=24, seed=3, val_identities=1,
                    identities=12)
    study.shuffle_captions(tmp_path / "data", tmp_path / "shuffled", seed=0)
    moved = 0
    for tar in sorted((tmp_path / "data").glob("*.tar")):
        before, after = _members(tar), _members(tmp_path / "shuffled" / tar.name)
        assert before.keys() == after.keys()
        assert {k: v for k, v in before.items() if not k.endswith(".txt")} == {
            k: v for k, v in after.items() if not k.endswith(".txt")}
        moved += sum(before[k] != after[k] for k in before if k.endswith(".txt"))
    captions = lambda folder: Counter(v for t in sorted(folder.glob("train-*.tar"))  # noqa: E731
                                      for k, v in _members(t).items() if k.endswith(".txt"))
    assert captions(tmp_path / "data") == captions(tmp_path / "shuffled") and moved >= 6


def test_other_name_is_the_farthest_well_attested_colour():
    meanings = {"background": {"gray": (np.array([128.0, 128, 128]), 30), "red": (np.array([190.0, 60, 60]), 5),
                               "white": (np.array([250.0, 250, 250]), 2), "blue": (np.array([60.0, 80, 200]), 3)}}
    # white is farthest from gray but only 2 training identities are called white
    assert study.other_name("background", "gray", np.array([150.0, 128, 100]), meanings) == "blue"
    assert study.other_name("background", "blue", np.array([60.0, 80, 200]), meanings) == "red"


def test_summary_pairs_clips_and_seeds_across_teachers():
    records = []
    for teacher, response in (("captions", 0.5), ("shuffled", 0.1)):
        for seed in (0, 1):
            for clip in range(3):
                for region in study.SCORED:
                    for ref in (False, True):
                        value = response + 0.01 * clip + (0.2 if ref else 0.0)
                        records.append({"teacher": teacher, "seed": seed, "clip": clip, "region": region,
                                        "text_guidance": 3.0,
                                        "reference": ref, "score_true_caption": 0.1, "score_other_caption": 0.1 + value,
                                        "response": value})
    rows = study.summarize(records)
    assert [(r["reference"], r["region"]) for r in rows] == [(False, "skin"), (False, "background"),
                                                            (True, "skin"), (True, "background")]
    assert rows[0]["captions_response"] == pytest.approx(0.51) and rows[2]["captions_response"] == pytest.approx(0.71)
    assert rows[0]["difference"] == pytest.approx(0.4) and rows[0]["difference_ci95"] == pytest.approx([0.4, 0.4])
    assert rows[0]["pairs"] == 6 and rows[0]["captions_n"] == 6
    assert "| 3 | without | skin | +0.510 [" in study.table(rows, "cmd")


@pytest.mark.slow
def test_runner_end_to_end_at_toy_size(tmp_path):
    from lit_avatar.checkpoint import read_generator

    out = tmp_path / "study"
    assert study.main(["--out", str(out), "--steps", "2", "--batch", "2", "--clips", "10", "--val-identities", "2",
                       "--eval-clips", "2", "--seeds", "0,1", "--sample-steps", "2", "--threads", "1",
                       "--text-guidance", "3"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 4 and len(results["records"]) == 2 * 2 * 2 * 2 * len(study.SCORED)
    for record in results["records"]:
        assert record["other_name"] != record["true_name"]
        assert record["response"] == pytest.approx(record["score_other_caption"] - record["score_true_caption"])
    assert all(r["pairs"] == 4 for r in results["rows"])
    record = read_generator(str(out / "logs" / "captions" / "version_0" / "checkpoints" / "last.ckpt")).record
    assert record["text_encoder"]["init_args"]["path"] == str(out / "data" / "text_encoder")
    assert "captions - control (paired)" in (out / "caption_study.md").read_text()


def test_captions_yaml_trains_on_synth_captions_and_names_its_text_encoder(tmp_path):
    from data_tools.synth import write_synthtalk
    from data_tools.synth_captions import write_synthtalk_text_encoder
    from lit_avatar.checkpoint import read_generator
    from lit_avatar.lightning_cli import main

    write_synthtalk(tmp_path / "data", clips=4, seconds=0.4, shards=1, size=32, seed=2, val_identities=1,
                    identities=2)
    encoder = write_synthtalk_text_encoder(tmp_path / "data" / "text_encoder")
    assert main(["fit", "--config", str(study.CONFIG), f"--data.init_args.train_shards={tmp_path}/data/train-*.tar",
                 f"--data.init_args.val_shards={tmp_path}/data/val-*.tar", "--data.init_args.batch_size=2",
                 "--data.init_args.num_workers=0", "--data.init_args.clip_frames=4", "--trainer.max_steps=1",
                 "--trainer.limit_val_batches=0", "--model.init_args.sampler.steps=1",
                 f"--model.init_args.text_encoder.init_args.path={encoder}",
                 f"--model.init_args.text_encoder.init_args.cache_dir={tmp_path}/cache",
                 f"--trainer.logger.init_args.save_dir={tmp_path}/runs", "--trainer.enable_progress_bar=false",
                 "--trainer.enable_model_summary=false"]) == 0
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    assert read_generator(str(ckpt)).record["text_encoder"]["init_args"]["path"] == str(encoder)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) >= 1  # captions went through the encoder
