"""eval.caption_score against hand-made frames: a region painted the named colour scores 1, the true colour 0."""
from __future__ import annotations

import numpy as np
import pytest

from eval.caption_score import caption_score, colour_shift, region_colour


def _frames(colour, other=(9, 200, 30), frames: int = 3) -> tuple[np.ndarray, np.ndarray]:
    video = np.empty((frames, 8, 8, 3), np.uint8)
    video[:] = other
    mask = np.zeros((8, 8), bool)
    mask[2:6, 1:5] = True
    video[:, mask] = colour
    return video, mask


def test_named_colour_scores_one_true_colour_zero():
    true, named = (200, 150, 120), (50, 80, 200)
    for colour, expected in ((named, 1.0), (true, 0.0), ((125, 115, 160), 0.5), ((275, 185, 80), -0.5)):
        video, mask = _frames(np.clip(colour, 0, 255))
        clipped = np.clip(colour, 0, 255)
        assert caption_score(video, mask, true, named) == pytest.approx(colour_shift(clipped, true, named))
        if np.array_equal(clipped, colour):
            assert caption_score(video, mask, true, named) == pytest.approx(expected)


def test_pixels_outside_the_region_and_sideways_moves_do_not_count():
    true, named = np.array([100.0, 100, 100]), np.array([200.0, 100, 100])
    video, mask = _frames(true.astype(np.uint8), other=(255, 0, 0))
    assert caption_score(video, mask, true, named) == 0.0
    assert colour_shift(true + [0, 60, -40], true, named) == 0.0  # orthogonal to the line true -> named
    half = video.copy()
    half[1:, mask] = named.astype(np.uint8)  # two of three frames named: two thirds of the way
    assert caption_score(half, mask, true, named) == pytest.approx(2 / 3)
    assert np.allclose(region_colour(half[0], mask), true)


def test_errors_name_the_problem():
    video, mask = _frames((1, 2, 3))
    with pytest.raises(ValueError, match="no direction"):
        colour_shift((1, 2, 3), (5, 5, 5), (5, 5, 5))
    with pytest.raises(ValueError, match="selects no pixel"):
        region_colour(video, np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match=r"region mask \(4, 4\) does not match frames \(8, 8\)"):
        region_colour(video, np.ones((4, 4), bool))
