"""Face detection shared by `data_tools build` (the crop) and `lit-avatar eval` (SyncNet crops, ArcFace
alignment): ONE detector module, following insightface's SCRFD conventions, plus OpenCV's bundled Haar
cascade as the fallback when no ONNX detector is given.

Supported ONNX detector outputs (picked from the model's outputs, no configuration needed):

1. Boxes: one output of shape [N, >=5] or [1, N, >=5], rows (x0, y0, x1, y1, score, ...) in the
   pixels of the network input; columns after the fifth (e.g. landmarks) are ignored. Rows with
   score below the threshold are dropped. The simplest format to export from any detector.
2. SCRFD (insightface `det_*.onnx` / `scrfd_*.onnx`, e.g. buffalo_l's det_10g.onnx): anchor-free,
   2*S or 3*S outputs for S strides (S = 3: strides 8, 16, 32, 2 anchors; S = 5: 8..128, 1 anchor),
   first the S score maps [K, 1], then the S box maps [K, 4] holding distances (left, top, right, bottom)
   in units of the stride from each anchor centre, then (optional) S landmark maps [K, 10] of offsets
   in strides. Anchors are laid out row-major over the (H // stride, W // stride) grid.

As insightface's SCRFD: the image is scaled to fit the input (sizes truncated with int(), aspect kept,
cv2.resize) and padded with zeros at the right and bottom; the network receives RGB normalised as
(pixel - 127.5) / 128 (insightface calls `cv2.dnn.blobFromImage(bgr, 1/128, size, 127.5, swapRB=True)`
on a BGR image, so its network too sees RGB); NMS at IoU 0.4 adds 1 to box widths and heights.
RetinaFace's prior-box format is not supported: export it to the boxes format instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_avatar.errors import UserError

HAAR_CASCADE = "haarcascade_frontalface_default.xml"


def nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first (insightface's: +1 on sides).

    Args:
        boxes: [N, 5] (x0, y0, x1, y1, score).
        threshold: IoU above which the lower-scoring box is dropped.
    """
    order = np.argsort(-boxes[:, 4], kind="stable")
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1)
        h = np.maximum(0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1)
        inter = w * h
        iou = inter / np.maximum(area[best] + area[rest] - inter, 1e-9)
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_scrfd(outputs: list[np.ndarray], input_hw: tuple[int, int], threshold: float
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """SCRFD score, distance (and landmark) maps -> [N, 5] boxes and [N, 5, 2] landmarks (or None) in
    network-input pixels, before NMS.

    Args:
        outputs: the model outputs in order (scores per stride, then boxes per stride, then
            optional landmarks).
        input_hw: the (H, W) the network saw.
        threshold: minimum score.
    """
    strides = {6: (8, 16, 32), 9: (8, 16, 32), 10: (8, 16, 32, 64, 128), 15: (8, 16, 32, 64, 128)}[len(outputs)]
    n = len(strides)
    has_kps = len(outputs) == 3 * n
    found, marks = [], []
    for level, stride in enumerate(strides):
        scores = np.asarray(outputs[level]).reshape(-1)
        dists = np.asarray(outputs[level + n]).reshape(-1, 4) * stride
        rows, cols = input_hw[0] // stride, input_hw[1] // stride
        anchors = max(1, scores.size // (rows * cols))
        ys, xs = np.mgrid[0:rows, 0:cols]
        centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        centres = np.repeat(centres, anchors, axis=0)[: scores.size]
        hit = scores >= threshold
        c, d = centres[hit], dists[hit]
        found.append(np.concatenate([c - d[:, :2], c + d[:, 2:], scores[hit, None]], axis=1))
        if has_kps:
            offsets = np.asarray(outputs[level + 2 * n]).reshape(-1, 5, 2)[hit] * stride
            marks.append(c[:, None, :] + offsets)
    boxes = np.concatenate(found, axis=0) if found else np.zeros((0, 5), np.float32)
    return boxes, (np.concatenate(marks, axis=0) if has_kps else None)


class OnnxFaceDetector:
    """A face detector read from a local ONNX file and run by onnxruntime on the CPU.

    Args:
        path: the .onnx file (formats in the module docstring).
        score_threshold: minimum detection score (insightface's det_thresh 0.5).
        nms_threshold: IoU for non-maximum suppression (insightface's 0.4).
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
        self.name = "scrfd" if self.kind == "scrfd" else "onnx_boxes"
        self.path = str(path)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def _blob(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Letterbox as insightface's SCRFD does; the blob keeps the RGB order the network expects."""
        import cv2

        h, w = image.shape[:2]
        in_h, in_w = self.input_hw
        if h / w > in_h / in_w:
            nh, nw = in_h, int(in_h / (h / w))
        else:
            nw, nh = in_w, int(in_w * (h / w))
        nh, nw = max(nh, 1), max(nw, 1)
        canvas = np.zeros((in_h, in_w, 3), np.uint8)
        canvas[:nh, :nw] = cv2.resize(np.ascontiguousarray(image, dtype=np.uint8), (nw, nh))
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128.0, (in_w, in_h), (127.5, 127.5, 127.5), swapRB=False)
        return np.ascontiguousarray(blob, dtype=np.float32), nh / h

    def detect_with_landmarks(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Faces in one RGB uint8 image [H, W, 3]: boxes [N, 5] (x0, y0, x1, y1, score) and 5-point
        landmarks [N, 5, 2] (None when the model has none), in its pixels, best score first."""
        blob, scale = self._blob(image)
        outputs = self.session.run(None, {self.input_name: blob})
        marks = None
        if self.kind == "scrfd":
            boxes, marks = decode_scrfd(outputs, self.input_hw, self.score_threshold)
        else:
            raw = np.asarray(outputs[0], np.float32)
            raw = raw.reshape(-1, raw.shape[-1])
            if raw.shape[-1] < 5:
                raise UserError(f"--face-detector {self.path}: boxes output has {raw.shape[-1]} columns; expected "
                                "(x0, y0, x1, y1, score)")
            boxes = raw[:, :5]
            boxes = boxes[boxes[:, 4] >= self.score_threshold]
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, marks = boxes[valid], (marks[valid] if marks is not None else None)
        if len(boxes):
            keep = nms(boxes, self.nms_threshold)
            boxes, marks = boxes[keep], (marks[keep] if marks is not None else None)
        out = boxes.astype(np.float32).copy()
        out[:, :4] /= scale
        return out, (marks / scale).astype(np.float32) if marks is not None else None

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Faces in one RGB uint8 image [H, W, 3] -> [N, 5] (x0, y0, x1, y1, score) in its pixels."""
        return self.detect_with_landmarks(image)[0]


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade, shipped inside the opencv-python(-headless) wheel: a real
    detector with nothing to download, of lower quality than SCRFD (frontal faces only, looser boxes, no
    landmarks, more misses on turned or dim faces). The fallback when no ONNX detector is given.

    Args:
        min_size: smallest face side searched, in pixels of the (downscaled) image.
        input_size: (H, W) an image is scaled down to fit before the search (speed).
    """

    name = "opencv_haar"

    def __init__(self, min_size: int = 24, input_size: tuple[int, int] = (640, 640)) -> None:
        import cv2

        path = Path(cv2.data.haarcascades) / HAAR_CASCADE
        if not path.is_file():
            raise UserError(f"{path}: OpenCV's Haar cascade is missing (opencv-python-headless 5.x wheels no longer "
                            "ship them; install opencv-python-headless<5) or give an ONNX face detector")
        self.cascade = cv2.CascadeClassifier(str(path))
        self.min_size = min_size
        self.input_hw = tuple(input_size)

    def detect_with_landmarks(self, image: np.ndarray) -> tuple[np.ndarray, None]:
        """Faces in one RGB uint8 image: boxes [N, 5] (score 1: the cascade gives no probability), no
        landmarks."""
        import cv2

        h, w = image.shape[:2]
        scale = min(1.0, self.input_hw[0] / h, self.input_hw[1] / w)
        gray = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            gray = cv2.resize(gray, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
        found = self.cascade.detectMultiScale(cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5,
                                              minSize=(self.min_size, self.min_size))
        boxes = np.zeros((len(found), 5), np.float32)
        for i, (x, y, bw, bh) in enumerate(found):
            boxes[i] = [x / scale, y / scale, (x + bw) / scale, (y + bh) / scale, 1.0]
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]), kind="stable")  # largest first
        return boxes[order], None

    def detect(self, image: np.ndarray) -> np.ndarray:
        return self.detect_with_landmarks(image)[0]


FaceDetector = OnnxFaceDetector | HaarFaceDetector


def load_face_detector(path: str | None, score_threshold: float = 0.5) -> FaceDetector:
    """The ONNX detector at `path`, or OpenCV's Haar cascade when no path is given."""
    if path is None:
        return HaarFaceDetector()
    return OnnxFaceDetector(path, score_threshold=score_threshold)


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
