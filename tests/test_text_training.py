"""Captions in training: the `txt` member, batches of captions, and stages that embed them through an injected
PromptEncoder (each unique caption once) and name it in the checkpoint record."""
from __future__ import annotations

import pytest
import torch
from batches import random_batch
from captioned import caption_shard

from lit_avatar.data.clips import collate
from lit_avatar.data.schema import SampleError, decode_sample, encode_sample
from lit_avatar.data.stream import ClipStream, SampleCounters
from lit_avatar.prompts import PromptEncoder

CAPTIONS = ("a woman talking, smiling", "a man talking in a studio")


def by_identity(key: str, meta: dict) -> str:
    """One of two captions, by identity."""
    return CAPTIONS[sum(map(ord, meta["identity"])) % 2]


@pytest.fixture(scope="module")
def captioned(synth_shards, tmp_path_factory):
    """The session's SynthTalk train shards with a caption per clip (two unique captions)."""
    out = tmp_path_factory.mktemp("captioned")
    for name in ("train-000000.tar", "train-000001.tar"):
        caption_shard(synth_shards / name, out / name, by_identity)
    return out


def test_a_caption_round_trips_through_the_schema():
    from lit_avatar.data.media import encode_video

    video = (torch.rand(3, 8, 8, 3) * 255).to(torch.uint8).numpy()
    meta = {"identity": "p0", "source": "test", "fps": 25.0, "num_frames": 3, "mouth_box": [0.2, 0.5, 0.8, 0.9]}
    audio = torch.zeros(3 * 640).numpy()
    raw = encode_sample("k0", encode_video(video, 25.0), meta, audio=audio, caption="a woman, smiling ✓")
    assert raw["txt"] == "a woman, smiling ✓".encode()
    assert decode_sample(raw, decode_video=False)["txt"] == "a woman, smiling ✓"
    bare = encode_sample("k1", encode_video(video, 25.0), meta, audio=audio)
    assert "txt" not in bare and "txt" not in decode_sample(bare, decode_video=False)
    with pytest.raises(SampleError, match=r"^sample k0: \.txt is not UTF-8 text"):
        decode_sample({**raw, "txt": b"\xff\xfe"}, decode_video=False)


def test_captions_batch_as_a_list_only_when_every_clip_has_one():
    clips = [{"meta": {"key": str(i), "identity": "p", "source": "s", "fps": 25.0}, "mouth": torch.zeros(2),
              "txt": f"caption {i}"} for i in range(3)]
    assert collate(clips)["txt"] == ["caption 0", "caption 1", "caption 2"]
    del clips[1]["txt"]
    assert "txt" not in collate(clips) and collate(clips)["mouth"].shape == (3, 2)


def test_a_batch_mixing_captioned_and_bare_clips_trains_without_captions_and_is_counted(synth_shards, tmp_path):
    half = caption_shard(synth_shards / "train-000000.tar", tmp_path / "half.tar",
                         lambda key, meta: "a woman" if key.endswith(("0", "2", "4", "6", "8")) else None)
    counters = SampleCounters(0)
    stream = ClipStream([str(half)], clip_frames=5, size=None, batch_size=4, counters=counters, train=False)
    batches = list(stream)
    assert all("txt" not in batch for batch in batches)
    assert counters.totals()["mixed_captions"] == len(batches) == 1


def _tiny_teacher(encoder, seed=0, **kwargs):
    from lit_avatar.models.audio import MelAudioEncoder
    from lit_avatar.models.dit import AvatarDiT
    from lit_avatar.models.presets import get_preset
    from lit_avatar.models.vae import PatchVAE
    from lit_avatar.modules.optim import LinearWarmup
    from lit_avatar.modules.teacher import TeacherModule
    from lit_avatar.modules.teacher_draws import ConditionDropout

    torch.manual_seed(seed)
    return TeacherModule(model=AvatarDiT(config=get_preset("micro", audio_feature_dim=40)), vae=PatchVAE(2),
                         audio_encoder=MelAudioEncoder(), text_encoder=encoder,
                         condition_dropout=ConditionDropout(text=0.0),
                         lr_scheduler=lambda optimizer: LinearWarmup(optimizer, warmup_steps=1), **kwargs)


def test_a_teacher_trained_on_captions_encodes_each_once_and_names_the_encoder(captioned, tiny_text_encoder,
                                                                               tmp_path, one_torch_thread):
    import lightning.pytorch as pl

    from lit_avatar.checkpoint import describe, load_generator
    from lit_avatar.data.datamodule import AvatarDataModule

    encoder = PromptEncoder(str(tiny_text_encoder), max_length=12, cache_dir=str(tmp_path / "prompts"))
    teacher = _tiny_teacher(encoder)
    texts = []
    teacher.model.register_forward_hook(lambda m, args, kwargs, out: texts.append(kwargs.get("text")),
                                        with_kwargs=True)
    data = AvatarDataModule(str(captioned / "train-*.tar"), batch_size=2, clip_frames=5, size=16)
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(teacher, datamodule=data)
    assert trainer.global_step == 4 and len(texts) == 4
    assert all(t is not None and t.shape == (2, 12, 16) for t in texts)  # captions reached the DiT
    assert encoder.encoded == len(CAPTIONS)  # 8 captioned clips over 4 steps, each unique caption encoded once
    assert len(list((tmp_path / "prompts").rglob("*.safetensors"))) == len(CAPTIONS)
    trainer.save_checkpoint(tmp_path / "t.ckpt")
    record = torch.load(tmp_path / "t.ckpt", weights_only=True)["lit_avatar"]
    assert record["text_encoder"] == describe(encoder)
    assert load_generator(str(tmp_path / "t.ckpt")).text_encoder.identity == encoder.identity


def test_without_captions_the_loss_is_what_it_was(tiny_text_encoder, tmp_path):
    """A stage given an encoder but a batch without captions computes the same loss, bit for bit, as one without
    the encoder; with captions but without an encoder the captions are ignored."""
    encoder = PromptEncoder(str(tiny_text_encoder), max_length=12, cache_dir=str(tmp_path))
    plain, with_encoder = _tiny_teacher(None), _tiny_teacher(encoder)
    batch = random_batch(frames=5)
    losses = [t.flow_loss(batch, generator=torch.Generator().manual_seed(3)) for t in (plain, with_encoder)]
    assert torch.equal(losses[0], losses[1]) and encoder.encoded == 0
    ignored = plain.flow_loss({**batch, "txt": list(CAPTIONS)}, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ignored, losses[0])
    used = with_encoder.flow_loss({**batch, "txt": list(CAPTIONS)}, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(used, losses[0]) and encoder.encoded == 2


def test_an_encoder_of_another_width_is_refused(tiny_text_encoder, tmp_path):
    from lit_avatar.errors import UserError
    from lit_avatar.prompts import write_tiny_text_encoder

    wide = write_tiny_text_encoder(tmp_path / "wide", ["a"], d_model=24)
    with pytest.raises(UserError, match=r"^model.text_encoder: .*wide gives 24-d embeddings, expected the "
                                        r"model's text_dim 16$"):
        _tiny_teacher(PromptEncoder(str(wide), cache_dir=str(tmp_path)))
