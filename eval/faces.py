"""Face boxes and landmarks for the face metrics (SyncNet crops, ArcFace alignment).

Either boxes are given (SynthTalk stores them; a sidecar can carry them) or an SCRFD-style ONNX detector
(insightface's det_10g.onnx) finds them. The detector wrapper is small on purpose: decode + NMS only.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lit_avatar.errors import UserError


def crop_square(frames: np.ndarray, boxes: np.ndarray, size: int = 224, crop_scale: float = 0.4,
                pad_value: float = 110.0) -> np.ndarray:
    """SyncNet-style face crops: a square around each box, widened by `crop_scale`, resized to size x size.

    The square has half-side bs*(1+crop_scale) with bs = max(box w, box h)/2; it is centred on the box
    horizontally and shifted down by bs*crop_scale so that the mouth sits well inside (as syncnet_python
    crops its face tracks). Outside the frame is filled with `pad_value`.

    Args:
        frames: [T, H, W, 3] uint8 or float (any range; kept as is).
        boxes: [T, 4] or [4] face boxes (x0, y0, x1, y1) in pixels.
        size: output side.
        crop_scale: relative margin.
        pad_value: fill outside the frame.

    Returns:
        float32 [T, size, size, 3] in the frames' value range.
    """
    frames = np.asarray(frames)
    t, h, w, _ = frames.shape
    boxes = np.broadcast_to(np.asarray(boxes, dtype=np.float64), (t, 4))
    out = np.empty((t, size, size, 3), np.float32)
    for i in range(t):
        x0, y0, x1, y1 = boxes[i]
        bs = max(x1 - x0, y1 - y0) / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = bs * (1 + crop_scale)
        top, left = cy - bs, cx - half
        side = max(int(round(2 * half)), 1)
        r0, c0 = int(round(top)), int(round(left))
        patch = np.full((side, side, 3), pad_value, np.float32)
        sr0, sr1 = max(r0, 0), min(r0 + side, h)
        sc0, sc1 = max(c0, 0), min(c0 + side, w)
        if sr1 > sr0 and sc1 > sc0:
            patch[sr0 - r0: sr1 - r0, sc0 - c0: sc1 - c0] = frames[i, sr0:sr1, sc0:sc1]
        x = torch.from_numpy(patch).permute(2, 0, 1)[None]
        out[i] = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    return out


def normalised_to_pixels(box: Sequence[float], width: int, height: int) -> np.ndarray:
    """(x0, y0, x1, y1) in [0, 1] -> pixels."""
    b = np.asarray(box, dtype=np.float64)
    return b * np.array([width, height, width, height], dtype=np.float64)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.4) -> list[int]:
    """Greedy non-maximum suppression; returns kept indices by decreasing score."""
    order = np.argsort(-scores)
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (xx1 - xx0).clip(0) * (yy1 - yy0).clip(0)
        iou = inter / (area[i] + area[rest] - inter + 1e-12)
        order = rest[iou <= iou_threshold]
    return keep


def decode_scrfd(outputs: Sequence[np.ndarray], input_size: int, strides=(8, 16, 32), num_anchors: int = 2,
                 threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Decode SCRFD head outputs into boxes, scores and 5-point landmarks (input-image pixels).

    SCRFD orders its outputs as scores per stride, then box distances per stride, then (if present)
    landmark offsets per stride; distances are in units of the stride from each anchor centre.

    Args:
        outputs: the ONNX outputs (batch dimension optional).
        input_size: the square network input side.
        strides: feature strides.
        num_anchors: anchors per location.
        threshold: score threshold.

    Returns:
        boxes [K, 4], scores [K], landmarks [K, 5, 2] or None; sorted by score after NMS.
    """
    n = len(strides)
    outs = [np.asarray(o).reshape(-1, np.asarray(o).shape[-1]) for o in outputs]
    has_kps = len(outs) >= 3 * n
    all_boxes, all_scores, all_kps = [], [], []
    for k, stride in enumerate(strides):
        side = input_size // stride
        yy, xx = np.mgrid[0:side, 0:side]
        centres = np.stack([xx, yy], -1).reshape(-1, 2).astype(np.float64) * stride
        centres = np.repeat(centres, num_anchors, axis=0)
        scores = outs[k].reshape(-1)
        dist = outs[n + k].reshape(-1, 4) * stride
        sel = scores >= threshold
        c = centres[sel]
        all_scores.append(scores[sel])
        all_boxes.append(np.concatenate([c - dist[sel, :2], c + dist[sel, 2:]], 1))
        if has_kps:
            kps = outs[2 * n + k].reshape(-1, 5, 2) * stride
            all_kps.append(c[:, None, :] + kps[sel])
    boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4))
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    kps = np.concatenate(all_kps) if has_kps else None
    keep = nms(boxes, scores)
    return boxes[keep], scores[keep], (kps[keep] if kps is not None else None)


class OnnxFaceDetector:
    """SCRFD-style face detector from a local ONNX file (e.g. buffalo_l/det_10g.onnx), CPU onnxruntime.

    Args:
        path: the ONNX file.
        input_size: square input side the frame is letterboxed into.
        threshold: detection score threshold.
    """

    def __init__(self, path: str | os.PathLike, input_size: int = 640, threshold: float = 0.5):
        import onnxruntime as ort

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise UserError(f"{path}: face detector ONNX file not found")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = input_size
        self.threshold = threshold

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Largest-score face in an RGB uint8 frame [H, W, 3]: (box [4], landmarks [5, 2] or None), pixels.

        Raises UserError-free ValueError when no face is found (callers decide what that means).
        """
        h, w = frame.shape[:2]
        scale = self.input_size / max(h, w)
        nh, nw = int(round(h * scale)), int(round(w * scale))
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        canvas = torch.zeros(1, 3, self.input_size, self.input_size)
        canvas[:, :, :nh, :nw] = x
        # insightface feeds BGR normalised by (x - 127.5) / 128
        blob = ((canvas.flip(1) - 127.5) / 128.0).numpy().astype(np.float32)
        outputs = self.session.run(None, {self.input_name: blob})
        boxes, _, kps = decode_scrfd(outputs, self.input_size, threshold=self.threshold)
        if not len(boxes):
            raise ValueError("no face found")
        return boxes[0] / scale, (kps[0] / scale if kps is not None else None)
