"""CSIM: identity preservation as the cosine similarity of ArcFace embeddings (reference vs each frame).

ArcFace (insightface buffalo_l's w600k_r50.onnx) runs through onnxruntime on CPU from a local folder.
Faces are aligned to the standard 112x112 ArcFace template by a 5-point similarity transform; the points
come from the SCRFD detector of the same pack, from given landmarks, or (without either) from a face box.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from eval.onnx_nodes import first_node_names
from lit_avatar.errors import existing_file

RECOGNITION_NAME = "w600k_r50.onnx"
DETECTION_NAME = "det_10g.onnx"
PACK_DIR = os.path.join("models", "buffalo_l")

# the 5 ArcFace template points (eyes, nose tip, mouth corners) in a 112x112 crop
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points to dst (Umeyama).

    Args:
        src: [K, 2] points.
        dst: [K, 2] points.

    Returns:
        2x3 matrix M with dst ~= M[:, :2] @ src + M[:, 2].
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.array([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    var_s = (sc ** 2).sum() / len(src)
    scale = float((s * d).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], 1)


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int | tuple[int, int] = 112) -> np.ndarray:
    """Warp image [H, W, 3] so that output pixel p shows the input at M^-1 p (pixel-centre coordinates),
    bilinear, zeros outside: what cv2.warpAffine does for alignment.

    Args:
        image: [H, W, 3].
        matrix: 2x3 similarity/affine from input to output coordinates.
        size: output side, or (height, width).
    """
    h, w = image.shape[:2]
    oh, ow = (size, size) if isinstance(size, int) else size
    a, t = matrix[:, :2], matrix[:, 2]
    inv = np.linalg.inv(a)
    ys, xs = np.mgrid[0:oh, 0:ow].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel()], 1) - t
    src = pts @ inv.T
    gx = 2 * src[:, 0] / max(w - 1, 1) - 1
    gy = 2 * src[:, 1] / max(h - 1, 1) - 1
    grid = torch.from_numpy(np.stack([gx, gy], 1).reshape(1, oh, ow, 2)).float()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].permute(1, 2, 0).numpy()


def align_face(frame: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Crop [size, size, 3] float (frame's value range) aligned to the ArcFace template."""
    return warp_affine(frame, similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / 112.0)), size)


def landmarks_from_box(box: Sequence[float]) -> np.ndarray:
    """Approximate 5 points from a face box (pixels) by placing the template in it: used when neither a
    detector nor landmarks are available (e.g. SynthTalk, whose faces are drawn frontal)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    xs = x0 + ARCFACE_TEMPLATE[:, 0] / 112.0 * (x1 - x0)
    ys = y0 + ARCFACE_TEMPLATE[:, 1] / 112.0 * (y1 - y0)
    return np.stack([xs, ys], 1)


class ArcFace:
    """ArcFace recognition ONNX model (input [N,3,112,112] RGB normalised, output [N,D] embedding).

    Args:
        path: the ONNX file (e.g. WEIGHTS/models/buffalo_l/w600k_r50.onnx).
    """

    def __init__(self, path: str | os.PathLike):
        import onnxruntime as ort

        path = os.fspath(path)
        existing_file(path, "an ArcFace ONNX file")
        self.mean, self.std = self._normalisation(path)  # first: a file that is no ONNX model is refused in one line
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @staticmethod
    def _normalisation(path: str) -> tuple[float, float]:
        """insightface's rule: graphs whose first 8 nodes include their own Sub and Mul take raw 0-255 pixels.
        Read from the file itself (no `onnx` needed); a file whose graph cannot be read is refused (UserError)."""
        names = first_node_names(path, 8)
        has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
        has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
        return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)

    def embed(self, aligned_rgb: np.ndarray) -> np.ndarray:
        """Embeddings [N, D] of aligned RGB crops [N, 112, 112, 3] (0-255)."""
        x = (np.asarray(aligned_rgb, np.float32) - self.mean) / self.std
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float64).reshape(len(x), -1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of a [D] or [N, D] with b [N, D]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    nb = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (na * nb).sum(-1)


def csim(arcface: ArcFace, reference: np.ndarray, ref_landmarks: np.ndarray, frames: np.ndarray,
         landmarks: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Cosine similarity between the reference face and the face in each frame.

    Args:
        arcface: the recognition model.
        reference: reference image [H, W, 3] RGB uint8.
        ref_landmarks: its 5 points [5, 2] (pixels).
        frames: video frames [T, H, W, 3] RGB uint8.
        landmarks: 5 points per frame [T, 5, 2] or one set [5, 2] for all.
        batch_size: frames per ONNX call.

    Returns:
        float64 [T].
    """
    ref = arcface.embed(align_face(reference, ref_landmarks)[None])[0]
    lms = np.broadcast_to(np.asarray(landmarks, np.float64), (len(frames), 5, 2))
    out = []
    for s in range(0, len(frames), batch_size):
        crops = np.stack([align_face(f, lm) for f, lm in zip(frames[s: s + batch_size], lms[s: s + batch_size])])
        out.append(cosine(ref, arcface.embed(crops)))
    return np.concatenate(out) if out else np.zeros(0)
