"""SynthTalk captions: each clip described in a few words a tiny text encoder and a CPU-trained teacher can learn.

A caption names the identity's skin, hair and background colours (the nearest colour of a small named
palette) and the clip's mouth state (from its ground-truth opening):

    "tan skin , brown hair , teal background , talking mouth"

Captions are a pure function of the identity's traits and the clip's opening: computing one draws no random
numbers, so the video and audio of every clip are the same with and without captions. `region_masks` says
where each named region is in a frame (the caption study scores colours there).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from data_tools.synth_face import Identity, render

# Colour words of hair and background (RGB 0..255). Skin has its own words: its colours span a narrow range.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25), "gray": (128, 128, 128), "white": (230, 230, 230), "red": (200, 40, 40),
    "orange": (230, 140, 40), "yellow": (225, 210, 60), "green": (50, 160, 70), "teal": (40, 160, 160),
    "blue": (50, 80, 200), "purple": (130, 60, 170), "pink": (230, 130, 180), "brown": (120, 75, 40),
}
SKINS: dict[str, tuple[int, int, int]] = {
    "pale": (230, 180, 150), "peach": (205, 150, 120), "tan": (180, 125, 95), "dark": (155, 105, 80),
}
PALETTES: dict[str, dict[str, tuple[int, int, int]]] = {"skin": SKINS, "hair": COLOURS, "background": COLOURS}
REGIONS = tuple(PALETTES)
# Mouth states by the clip's mean ground-truth opening (thresholds split SynthTalk's clips roughly in thirds).
MOUTH_STATES: tuple[tuple[str, float], ...] = (("closed", 0.22), ("talking", 0.3), ("wide open", float("inf")))
TEMPLATE = "{skin} skin , {hair} hair , {background} background , {mouth} mouth"


def region_colours(identity: Identity) -> dict[str, np.ndarray]:
    """The true RGB colour of each named region (the background: the mean of its gradient's two ends)."""
    start, end = identity.background
    return {"skin": np.asarray(identity.skin, float), "hair": np.asarray(identity.hair, float),
            "background": (np.asarray(start, float) + np.asarray(end, float)) / 2}


def nearest_name(colour, palette: dict[str, tuple[int, int, int]]) -> str:
    """The palette's name for `colour` (Euclidean RGB distance; ties to the first name)."""
    names = list(palette)
    distance = [float(np.sum((np.asarray(colour, float) - np.asarray(palette[n], float)) ** 2)) for n in names]
    return names[int(np.argmin(distance))]


def mouth_state(opening: np.ndarray) -> str:
    """"closed", "talking" or "wide open" from the clip's mean ground-truth opening."""
    mean = float(np.mean(opening)) if len(opening) else 0.0
    return next(name for name, upper in MOUTH_STATES if mean < upper)


def caption_words(identity: Identity, opening: np.ndarray) -> dict[str, str]:
    """The caption's words by slot: skin, hair, background, mouth."""
    colours = region_colours(identity)
    words = {region: nearest_name(colours[region], PALETTES[region]) for region in REGIONS}
    return {**words, "mouth": mouth_state(opening)}


def format_caption(words: dict[str, str]) -> str:
    return TEMPLATE.format(**words)


def clip_caption(identity: Identity, opening: np.ndarray) -> str:
    """The caption of a clip of `identity` whose mouth opens as `opening` [T]."""
    return format_caption(caption_words(identity, opening))


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain (the SynthTalk text encoder's tokenizer vocabulary)."""
    fixed = re.sub(r"\{\w+\}", " ", TEMPLATE).split()
    states = [w for name, _ in MOUTH_STATES for w in name.split()]
    return list(dict.fromkeys([*fixed, *SKINS, *COLOURS, *states]))


def region_masks(identity: Identity, size: int, erode: int = 1) -> dict[str, np.ndarray]:
    """Boolean [size, size] masks of the pixels that show only skin, only hair, only background.

    Painted by the renderer itself with one pure colour per region and the head at rest, then eroded by
    `erode` pixels so head motion (at most ~0.5 px at 32 px) and anti-aliased edges stay outside them.
    Skin excludes the eyes and the mouth at its widest.
    """
    keys = {"background": (0, 0, 255), "hair": (0, 255, 0), "skin": (255, 0, 0)}
    labels = dataclasses.replace(identity, skin=keys["skin"], hair=keys["hair"], clothes=(0, 0, 0),
                                 background=(keys["background"], keys["background"]), mouth_color=(0, 0, 0))
    frame = render(labels, size, np.zeros((1, 2)), np.ones(1), np.ones(1))[0].astype(int)
    masks = {}
    for region, colour in keys.items():
        mask = np.all(frame == np.asarray(colour), axis=-1)
        for _ in range(erode):
            mask = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
        masks[region] = mask
    return masks


def write_synthtalk_text_encoder(folder, d_model: int | None = None, seed: int = 0):
    """The SynthTalk text encoder: a tiny random umT5 whose tokenizer knows every caption word, as a local
    folder a PromptEncoder (and a teacher YAML's `text_encoder`) loads; returns the folder.

    Args:
        folder: where to write it (created).
        d_model: embedding width; default the `tiny` DiT preset's text_dim (the SynthTalk teacher's).
        seed: weights' seed.
    """
    from lit_avatar.models.presets import PRESETS
    from lit_avatar.prompts import write_tiny_text_encoder

    width = int(d_model if d_model is not None else PRESETS["tiny"].text_dim)
    return write_tiny_text_encoder(folder, caption_vocabulary(), d_model=width, num_layers=2, num_heads=2,
                                   d_ff=2 * width, seed=seed)
