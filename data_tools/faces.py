"""Face boxes from a local ONNX detector, and the stable square crop a clip is cut with.

Supported detector outputs (picked from the model's outputs, no configuration needed):

1. Boxes: one output of shape [N, >=5] or [1, N, >=5], rows (x0, y0, x1, y1, score, ...) in the
   pixels of the network input; columns after the fifth (e.g. landmarks) are ignored. Rows with
   score below the threshold are dropped. The simplest format to export from any detector.
2. SCRFD (insightface `det_*.onnx` / `scrfd_*.onnx`, e.g. buffalo_l's det_10g.onnx): anchor-free,
   2*S or 3*S outputs for S strides (S = 3: strides 8, 16, 32; S = 5: 8..128), first the S score maps
   [K, 1], then the S box maps [K, 4] holding distances (left, top, right, bottom) in units of the
   stride from each anchor centre (optional S landmark maps [K, 10] are ignored). Anchors are laid
   out row-major over the (H/stride, W/stride) grid with A anchors per cell, A = K / cells.

In both cases the input is [1, 3, H, W] float32 RGB normalised as (pixel - 127.5) / 128. A fixed
H, W in the model is honoured, otherwise `input_size` is used; the image is scaled to fit (aspect
kept) and padded with zeros at the right and bottom (the insightface convention).
RetinaFace's prior-box format is not supported: export it to the boxes format instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_avatar.errors import UserError


def nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first.

    Args:
        boxes: [N, 5] (x0, y0, x1, y1, score).
        threshold: IoU above which the lower-scoring box is dropped.
    """
    order = np.argsort(-boxes[:, 4], kind="stable")
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]))
        h = np.maximum(0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]))
        inter = w * h
        iou = inter / np.maximum(area[best] + area[rest] - inter, 1e-9)
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_scrfd(outputs: list[np.ndarray], input_hw: tuple[int, int], threshold: float) -> np.ndarray:
    """SCRFD score and distance maps -> [N, 5] boxes in network-input pixels (before NMS).

    Args:
        outputs: the model outputs in order (scores per stride, then boxes per stride, then
            optional landmarks).
        input_hw: the (H, W) the network saw.
        threshold: minimum score.
    """
    strides = {6: (8, 16, 32), 9: (8, 16, 32), 10: (8, 16, 32, 64, 128), 15: (8, 16, 32, 64, 128)}[len(outputs)]
    found = []
    for level, stride in enumerate(strides):
        scores = outputs[level].reshape(-1)
        dists = outputs[level + len(strides)].reshape(-1, 4) * stride
        rows, cols = -(-input_hw[0] // stride), -(-input_hw[1] // stride)
        anchors = max(1, scores.size // (rows * cols))
        ys, xs = np.mgrid[0:rows, 0:cols]
        centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        centres = np.repeat(centres, anchors, axis=0)[: scores.size]
        hit = scores >= threshold
        c, d = centres[hit], dists[hit]
        found.append(np.concatenate([c - d[:, :2], c + d[:, 2:], scores[hit, None]], axis=1))
    return np.concatenate(found, axis=0) if found else np.zeros((0, 5), np.float32)


class OnnxFaceDetector:
    """A face detector read from a local ONNX file and run by onnxruntime on the CPU.

    Args:
        path: the .onnx file (formats in the module docstring).
        score_threshold: minimum detection score.
        nms_threshold: IoU for non-maximum suppression.
        input_size: (H, W) fed to models whose input size is dynamic.
    """

    def __init__(self, path: str, score_threshold: float = 0.5, nms_threshold: float = 0.4,
                 input_size: tuple[int, int] = (640, 640)) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise UserError(f"--face-detector {path}: file not found (expected an ONNX face detector)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallelism comes from build workers
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise UserError(f"--face-detector {path}: cannot load as ONNX ({str(err).splitlines()[0]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise UserError(f"--face-detector {path}: expected one input [1,3,H,W], got "
                            f"{[i.shape for i in inputs]}")
        self.input_name = inputs[0].name
        h, w = inputs[0].shape[2:]
        self.input_hw = (h, w) if isinstance(h, int) and isinstance(w, int) else tuple(input_size)
        count = len(self.session.get_outputs())
        if count in (6, 9, 10, 15):
            self.kind = "scrfd"
        elif count >= 1 and len(self.session.get_outputs()[0].shape or []) in (2, 3):
            self.kind = "boxes"
        else:
            raise UserError(f"--face-detector {path}: {count} outputs; expected boxes [N,5] or SCRFD score/box maps")
        self.path = str(path)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def _blob(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        from PIL import Image

        h, w = image.shape[:2]
        scale = min(self.input_hw[0] / h, self.input_hw[1] / w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if (nh, nw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        canvas = np.zeros((*self.input_hw, 3), np.float32)
        canvas[:nh, :nw] = image
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        return np.ascontiguousarray(blob, dtype=np.float32), scale

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Faces in one RGB uint8 image [H, W, 3] -> [N, 5] (x0, y0, x1, y1, score) in its pixels.

        Args:
            image: the frame (any size; it is letterboxed to the network input).
        """
        blob, scale = self._blob(image)
        outputs = self.session.run(None, {self.input_name: blob})
        if self.kind == "scrfd":
            boxes = decode_scrfd(outputs, self.input_hw, self.score_threshold)
        else:
            raw = np.asarray(outputs[0], np.float32)
            raw = raw.reshape(-1, raw.shape[-1])
            if raw.shape[-1] < 5:
                raise UserError(f"--face-detector {self.path}: boxes output has {raw.shape[-1]} columns; expected "
                                "(x0, y0, x1, y1, score)")
            boxes = raw[:, :5]
            boxes = boxes[boxes[:, 4] >= self.score_threshold]
        boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        if len(boxes):
            boxes = boxes[nms(boxes, self.nms_threshold)]
        out = boxes.astype(np.float32).copy()
        out[:, :4] /= scale
        return out


def largest_face(boxes: np.ndarray) -> np.ndarray | None:
    """The biggest box: in a talking-head video the speaker is the closest face."""
    if len(boxes) == 0:
        return None
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[int(np.argmax(area)), :4]


@dataclass(frozen=True)
class Crop:
    """A square crop of a clip, in source pixels, and the face box inside it.

    Args:
        x0: left edge.
        y0: top edge.
        side: width = height.
        face: median face box (x0, y0, x1, y1) in source pixels, or None for a centre crop.
    """

    x0: int
    y0: int
    side: int
    face: tuple[float, float, float, float] | None = None

    def mouth_box(self) -> tuple[float, float, float, float]:
        """The mouth region normalised to the crop: the lower-middle part of the face box.

        Why a heuristic: real data has no landmarks here; the box only weights the loss near the mouth,
        so a generous region (half the face width, 62%..92% of its height) is enough. A centre crop
        without a face assumes a centred, upright face filling the middle of the frame.
        """
        if self.face is None:
            return (0.35, 0.6, 0.65, 0.85)
        fx0, fy0, fx1, fy1 = self.face
        w, h = fx1 - fx0, fy1 - fy0
        cx = 0.5 * (fx0 + fx1)
        box = np.array([cx - 0.25 * w, fy0 + 0.62 * h, cx + 0.25 * w, fy0 + 0.92 * h], np.float64)
        box = (box - [self.x0, self.y0, self.x0, self.y0]) / self.side
        return tuple(float(v) for v in np.clip(box, 0.0, 1.0))


def _fit(centre: float, side: int, limit: int) -> int:
    """Left/top edge of a window of `side` centred near `centre`, moved inside [0, limit)."""
    return int(min(max(round(centre - side / 2), 0), limit - side))


def centre_crop(width: int, height: int) -> Crop:
    """The largest centred square: what `--no-face` uses."""
    side = min(width, height)
    return Crop(x0=(width - side) // 2, y0=(height - side) // 2, side=side)


def stable_crop(boxes: list[np.ndarray | None], width: int, height: int, margin: float) -> Crop | None:
    """One square crop for the whole clip from the faces found on a few frames.

    Why one crop per clip: a box that follows every detection jitters, and the model would learn
    the jitter. The median centre ignores an odd detection; the largest face size plus the margin
    keeps the head inside the crop while it moves.

    Args:
        boxes: the face box (x0, y0, x1, y1) per sampled frame, None where no face was found.
        width: source frame width.
        height: source frame height.
        margin: added on each side, as a fraction of the face size (0.4 -> side = 1.8 x face).
    """
    found = np.array([b for b in boxes if b is not None], np.float64).reshape(-1, 4)
    if len(found) == 0:
        return None
    centres = 0.5 * (found[:, :2] + found[:, 2:])
    sizes = np.maximum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1])
    cx, cy = np.median(centres, axis=0)
    side = int(min(round(sizes.max() * (1 + 2 * margin)), width, height))
    side = max(side, 2)
    med_w, med_h = np.median(found[:, 2] - found[:, 0]), np.median(found[:, 3] - found[:, 1])
    face = (cx - med_w / 2, cy - med_h / 2, cx + med_w / 2, cy + med_h / 2)
    return Crop(x0=_fit(cx, side, width), y0=_fit(cy, side, height), side=side,
                face=tuple(float(v) for v in face))
