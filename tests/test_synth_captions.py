"""SynthTalk captions: what they say, that they leave every video and audio byte as it was, and their encoder."""
from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np

from data_tools.synth import identity_traits, make_clip, write_synthtalk
from data_tools.synth_captions import (
    COLOURS,
    SKINS,
    caption_vocabulary,
    caption_words,
    clip_caption,
    mouth_state,
    nearest_name,
    region_colours,
    region_masks,
    write_synthtalk_text_encoder,
)
from data_tools.synth_face import render


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _members(folder: Path) -> dict[tuple[str, str], bytes]:
    out = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as handle:
            out.update({(tar.name, m.name): handle.extractfile(m).read() for m in handle.getmembers()})
    return out


def test_clips_draw_the_same_random_numbers_as_before_captions():
    # sha256 of frames, audio and reference computed with the code before captions (main at b08ee77)
    clip = make_clip(1234, 3, 3, 0.4, 24)
    assert _sha(clip.frames) == "7d0ff162a24c742c9ad6c750fa5370804fac75834b56e23aa670edfbcc0493ae"
    assert _sha(clip.audio) == "e30e999b266e8280511784665ce1824eb7ccc5e778735310ab2d5069cffa212d"
    assert _sha(clip.ref) == "c3077912f15da922dd8dbd98af19fe04e7354f36663b51ddd90e918a38a10a98"
    assert clip.caption == clip_caption(identity_traits(1234, 3, 24), clip.opening)


def test_captions_add_a_txt_member_and_change_no_other_byte(tmp_path, monkeypatch):
    import lit_avatar.data.media as media

    # x264 output varies from run to run on a busy machine (main's code as well): the mp4 member holds the sha256 of
    # what the encoder is given instead, frames and audio, which must not move
    monkeypatch.setattr(media, "encode_video", lambda frames, fps, audio, rate: (_sha(frames) + _sha(audio)).encode())
    kwargs = dict(clips=6, seconds=0.4, shards=2, size=24, seed=5, val_identities=1, identities=3)
    write_synthtalk(tmp_path / "with", **kwargs)
    write_synthtalk(tmp_path / "without", captions=False, **kwargs)
    with_, without = _members(tmp_path / "with"), _members(tmp_path / "without")
    captions = {k: v for k, v in with_.items() if k[1].endswith(".txt")}
    assert len(captions) == 6 and not any(k[1].endswith(".txt") for k in without)
    assert {k: v for k, v in with_.items() if k not in captions} == without  # mp4, flac, json, ref.png
    for (_, name), text in captions.items():
        identity, clip = int(name[2:7]), int(name[9:15])
        assert text.decode() == make_clip(5, clip, identity, 0.4, 24).caption


def test_caption_names_the_nearest_palette_colours_and_the_mouth_state():
    identity = identity_traits(0, 1, 32)
    identity.skin, identity.hair = (232, 182, 148), (45, 75, 205)
    identity.background = ((0, 150, 150), (80, 170, 170))
    assert clip_caption(identity, np.full(10, 0.5)) == "pale skin , blue hair , teal background , wide open mouth"
    assert [mouth_state(np.full(4, v)) for v in (0.0, 0.21, 0.22, 0.29, 0.3)] == [
        "closed", "closed", "talking", "talking", "wide open"]
    assert nearest_name(COLOURS["pink"], COLOURS) == "pink" and nearest_name((10, 10, 10), COLOURS) == "black"
    words = set(caption_vocabulary())
    for i in range(40):  # every word of real captions is in the tokenizer's vocabulary (no <unk>)
        clip_words = caption_words(identity_traits(0, i, 32), np.full(3, i / 40))
        assert set(clip_caption(identity_traits(0, i, 32), np.full(3, i / 40)).split()) <= words
        assert clip_words["skin"] in SKINS and clip_words["hair"] in COLOURS


def test_region_masks_cover_only_their_region():
    identity = identity_traits(0, 2, 32)
    masks = region_masks(identity, 32)
    frames = render(identity, 32, np.zeros((1, 2)), np.ones(1), np.ones(1))[0].astype(float)
    colours = region_colours(identity)
    assert masks["skin"].sum() > 80 and masks["background"].sum() > 250
    assert np.abs(frames[masks["skin"]] - colours["skin"]).max() <= 0.5
    start, end = (np.asarray(c) for c in identity.background)
    low, high = np.minimum(start, end) - 0.5, np.maximum(start, end) + 0.5  # the gradient stays between its ends
    assert np.all((frames[masks["background"]] >= low) & (frames[masks["background"]] <= high))


def test_synthtalk_text_encoder_encodes_every_caption_word(tmp_path):
    from lit_avatar.models.presets import PRESETS
    from lit_avatar.prompts import PromptEncoder

    folder = write_synthtalk_text_encoder(tmp_path / "text_encoder")
    encoder = PromptEncoder(str(folder), max_length=24, cache_dir=str(tmp_path / "cache"))
    assert encoder.text_dim == PRESETS["tiny"].text_dim
    tokenizer = encoder.network().tokenizer
    caption = "dark skin , yellow hair , purple background , wide open mouth"
    ids = tokenizer(caption)["input_ids"]
    assert len(ids) == len(caption.split()) + 1 and tokenizer.unk_token_id not in ids
    texts = [caption, caption.replace("dark", "pale")]
    embeddings = encoder(texts)
    assert embeddings.shape == (2, 24, PRESETS["tiny"].text_dim)
    assert not embeddings[0].equal(embeddings[1]) and embeddings[:, len(ids):].abs().max() == 0
