"""Procedural faces for SynthTalk, drawn with vectorised numpy (no per-pixel Python loops).

An identity is a set of traits (face shape, skin, hair, clothes, eyes, mouth placement, background).
Frames are painted back to front with anti-aliased ellipses, so the mouth's dark area changes smoothly
with its opening even at 32 px. The mouth interior is far darker than any skin tone, and the mouth box
(fixed per clip) covers the widest opening under the head motion while staying inside the face: both
make the dark-pixel lip-sync measure of `eval.synthsync` exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
MOTION_AMPLITUDE = 0.015  # head translation, fraction of the frame, per axis


@dataclass
class Identity:
    """Everything that makes one synthetic person look and sound like themselves.

    Geometry is in normalised frame coordinates (0..1); colours are RGB 0..255.
    """

    face_center: tuple[float, float]
    face_radii: tuple[float, float]
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_scale: tuple[float, float]
    clothes: tuple[float, float, float]
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    background_angle: float
    eye_offset: tuple[float, float]  # (x, y) in face radii
    eye_radius: float  # in face x-radii
    mouth_offset: tuple[float, float]  # (x, y) in face radii
    mouth_half_width: float  # in face x-radii
    mouth_max_half_height: float  # in face y-radii
    mouth_color: tuple[float, float, float]
    pitch: float  # voice f0, Hz


def _colour(rng: np.random.Generator, low: float, high: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(low, high, size=3))


def box_inside_face(identity: Identity, size: int) -> bool:
    """Whether the mouth box stays on the face and below the eyes however the head moves."""
    x0, y0, x1, y1 = mouth_box(identity, size)
    (cx, cy), (rx, ry) = identity.face_center, identity.face_radii
    eye_bottom = cy + identity.eye_offset[1] * ry + 0.7 * identity.eye_radius * rx + 1.0 / size
    if y0 <= eye_bottom + MOTION_AMPLITUDE:
        return False
    for x in (x0, x1):
        for y in (y0, y1):
            # worst case: the face has moved MOTION_AMPLITUDE away from the (static) corner on both axes
            dx = max(abs(x - cx) + MOTION_AMPLITUDE, 0.0)
            dy = max(abs(y - cy) + MOTION_AMPLITUDE, 0.0)
            if (dx / rx) ** 2 + (dy / ry) ** 2 >= 1.0:
                return False
    return True


def sample_identity(rng: np.random.Generator, size: int) -> Identity:
    """Draw one identity's traits, redrawing the mouth until its box stays inside the face at `size` px."""
    identity = _draw_identity(rng)
    for _ in range(200):
        if box_inside_face(identity, size):
            return identity
        identity.mouth_offset = (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(0.26, 0.4)))
        identity.mouth_half_width = float(rng.uniform(0.26, 0.4))
        identity.mouth_max_half_height = float(rng.uniform(0.17, 0.24))
        identity.face_radii = (float(rng.uniform(0.26, 0.3)), float(rng.uniform(0.33, 0.37)))
        identity.eye_offset = (identity.eye_offset[0], float(rng.uniform(-0.35, -0.2)))
    raise ValueError(f"size {size}: too small for a SynthTalk face with a mouth box inside it (use >= 24 px)")


def _draw_identity(rng: np.random.Generator) -> Identity:
    red = rng.uniform(150, 240)
    green = red * rng.uniform(0.65, 0.85)
    skin = (float(red), float(green), float(green * rng.uniform(0.7, 0.92)))  # luma >= ~105
    return Identity(
        face_center=(float(rng.uniform(0.46, 0.54)), float(rng.uniform(0.47, 0.53))),
        face_radii=(float(rng.uniform(0.25, 0.3)), float(rng.uniform(0.32, 0.37))),
        skin=skin,
        hair=_colour(rng, 10, 200),
        hair_scale=(float(rng.uniform(1.04, 1.2)), float(rng.uniform(0.9, 1.08))),
        clothes=_colour(rng, 0, 255),
        background=(_colour(rng, 0, 255), _colour(rng, 0, 255)),
        background_angle=float(rng.uniform(0, 2 * np.pi)),
        eye_offset=(float(rng.uniform(0.33, 0.45)), float(rng.uniform(-0.35, -0.2))),
        eye_radius=float(rng.uniform(0.13, 0.18)),
        mouth_offset=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(0.26, 0.4))),
        mouth_half_width=float(rng.uniform(0.26, 0.4)),
        mouth_max_half_height=float(rng.uniform(0.17, 0.24)),
        mouth_color=(float(rng.uniform(35, 70)), float(rng.uniform(5, 20)), float(rng.uniform(10, 25))),
        pitch=float(rng.uniform(95, 240)),
    )


def head_motion(rng: np.random.Generator) -> np.ndarray:
    """Per-recording motion parameters: 2 axes x 2 sinusoids x (amplitude, frequency Hz, phase)."""
    amplitude = rng.uniform(0.2, 0.5, size=(2, 2)) * MOTION_AMPLITUDE
    frequency = rng.uniform(0.15, 0.8, size=(2, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(2, 2))
    return np.stack([amplitude, frequency, phase], axis=-1)


def motion_offsets(motion: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Head offset (dx, dy) [T, 2] at `times` (s); |offset| <= MOTION_AMPLITUDE per axis."""
    amp, freq, phase = motion[..., 0], motion[..., 1], motion[..., 2]
    waves = amp[None] * np.sin(2 * np.pi * freq[None] * times[:, None, None] + phase[None])
    return waves.sum(axis=-1)


def blink_factors(rng: np.random.Generator, times: np.ndarray, rate_hz: float = 0.35) -> np.ndarray:
    """Eye openness per frame in [0.1, 1]: blinks of ~0.2 s at random times."""
    span = float(times.max() - times.min()) + 1.0 if times.size else 1.0
    starts = times.min() - 0.5 + np.cumsum(rng.exponential(1.0 / rate_hz, size=int(span * rate_hz * 3) + 2))
    distance = np.abs(times[:, None] - starts[None, :]).min(axis=1) if starts.size else np.full(times.shape, 9.0)
    return 1.0 - 0.9 * np.clip(1.0 - distance / 0.1, 0.0, 1.0)


def mouth_box(identity: Identity, size: int) -> list[float]:
    """Normalised (x0, y0, x1, y1) covering the widest mouth under any head offset, plus 1 px."""
    cx, cy = identity.face_center
    rx, ry = identity.face_radii
    mx, my = cx + identity.mouth_offset[0] * rx, cy + identity.mouth_offset[1] * ry
    half_w = identity.mouth_half_width * rx + MOTION_AMPLITUDE + 1.0 / size
    half_h = identity.mouth_max_half_height * ry + MOTION_AMPLITUDE + 1.0 / size
    box = [mx - half_w, my - half_h, mx + half_w, my + half_h]
    return [float(np.clip(v, 0.0, 1.0)) for v in box]


def _ellipse_alpha(u: np.ndarray, v: np.ndarray, cx, cy, rx, ry, size: int) -> np.ndarray:
    """Anti-aliased coverage of an ellipse per pixel, broadcast over leading (frame) axes.

    Uses the first-order signed distance (q - 1) / |grad q| with q the ellipse's quadratic form, and
    caps the coverage of ellipses thinner than a pixel by their thickness, so dark area ~ true area.
    """
    du, dv = u - cx, v - cy
    q = (du / rx) ** 2 + (dv / ry) ** 2
    grad = 2.0 * np.sqrt((du / rx ** 2) ** 2 + (dv / ry ** 2) ** 2) + 1e-12
    distance_px = (q - 1.0) / grad * size
    thickness = np.minimum(1.0, 2.0 * np.minimum(rx, ry) * size)
    return np.clip(0.5 - distance_px, 0.0, 1.0) * thickness


def _paint(image: np.ndarray, alpha: np.ndarray, colour) -> None:
    image += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - image)


def render(identity: Identity, size: int, offsets: np.ndarray, opening: np.ndarray, eyes: np.ndarray) -> np.ndarray:
    """Paint frames of one identity.

    Args:
        identity: the person.
        size: frame height and width in pixels.
        offsets: head offset [T, 2] (normalised).
        opening: mouth opening [T] in [0, 1].
        eyes: eye openness [T] in [0, 1].

    Returns:
        uint8 [T, size, size, 3] RGB.
    """
    count = len(opening)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = grid[None, None, :], grid[None, :, None]

    def col(x):  # one value per frame, as a column that broadcasts over the frame
        return np.asarray(x, dtype=np.float32).reshape(-1, 1, 1)

    (c0, c1), angle = identity.background, identity.background_angle
    ramp = np.clip(0.5 + (u - 0.5) * np.cos(angle) + (v - 0.5) * np.sin(angle), 0, 1)[0]
    start = np.asarray(c0, np.float32)
    background = start + ramp[..., None] * (np.asarray(c1, np.float32) - start)
    image = np.repeat(background[None], count, axis=0).astype(np.float32)
    cx, cy = col(identity.face_center[0] + offsets[:, 0]), col(identity.face_center[1] + offsets[:, 1])
    rx, ry = identity.face_radii
    _paint(image, _ellipse_alpha(u, v, cx, np.full_like(cy, 1.02), 0.42, 0.2, size), identity.clothes)
    hx, hy = identity.hair_scale
    _paint(image, _ellipse_alpha(u, v, cx, cy - 0.12 * ry, rx * hx, ry * hy, size), identity.hair)
    _paint(image, _ellipse_alpha(u, v, cx, cy, rx, ry, size), identity.skin)
    ex, ey = identity.eye_offset
    eye_rx = identity.eye_radius * rx
    eye_ry = col(np.maximum(eye_rx * 0.7 * eyes, 0.2 / size))
    for side in (-1.0, 1.0):
        ecx, ecy = cx + side * ex * rx, cy + ey * ry
        _paint(image, _ellipse_alpha(u, v, ecx, ecy, eye_rx, eye_ry, size), (240, 240, 235))
        pupil = _ellipse_alpha(u, v, ecx, ecy, eye_rx * 0.5, np.minimum(eye_ry, eye_rx * 0.5), size)
        _paint(image, pupil, (30, 25, 20))
    closed = 0.35 / size  # a closed mouth is a thin dark line
    half_h = col(closed + np.clip(opening, 0, 1) * (identity.mouth_max_half_height * ry - closed))
    mx, my = cx + identity.mouth_offset[0] * rx, cy + identity.mouth_offset[1] * ry
    _paint(image, _ellipse_alpha(u, v, mx, my, identity.mouth_half_width * rx, half_h, size), identity.mouth_color)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
