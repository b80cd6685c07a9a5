"""Tiny raw videos and a toy ONNX face detector, for tests and the build benchmark.

Why here and not in tests/: bench/build_throughput.py needs the same inputs, and both must run on
a machine with no downloadable data or weights. The "face" is a skin-coloured ellipse on a dark
background; the detector thresholds the red channel and returns the bounding box of what passes,
in the documented boxes format [1, 5] (x0, y0, x1, y1, score).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SKIN = (225, 180, 150)
BACKGROUND = (25, 35, 45)


def talking_frames(num_frames: int, width: int, height: int, face_frac: float = 0.5, seed: int = 0) -> np.ndarray:
    """Frames with a slowly moving face ellipse whose dark mouth opens and closes.

    Args:
        num_frames: T.
        width: W.
        height: H.
        face_frac: face height as a fraction of min(W, H) (small values make "too small" faces).
        seed: motion phase.
    """
    rng = np.random.default_rng(seed)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    ry = face_frac * min(width, height) / 2
    rx = 0.8 * ry
    phase = rng.uniform(0, 2 * np.pi)
    for t in range(num_frames):
        frames[t] = BACKGROUND
        cx = width / 2 + 0.05 * width * np.sin(phase + t / 10)
        cy = height / 2 + 0.03 * height * np.cos(phase + t / 13)
        face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        frames[t][face] = SKIN
        opening = 0.5 + 0.5 * np.sin(t / 3)
        mouth = ((xx - cx) / (0.4 * rx)) ** 2 + ((yy - cy - 0.5 * ry) / (0.05 * ry + 0.15 * ry * opening)) ** 2 <= 1
        frames[t][mouth] = (60, 20, 30)
    return frames


def speech_like(seconds: float, sample_rate: int = 16000, level: float = 0.3, seed: int = 0) -> np.ndarray:
    """A tone with syllable-rate amplitude changes; level 0 gives digital silence.

    Args:
        seconds: length.
        sample_rate: Hz.
        level: peak amplitude.
        seed: pitch.
    """
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    pitch = 120 + 40 * np.random.default_rng(seed).uniform()
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (level * envelope * np.sin(2 * np.pi * pitch * t)).astype(np.float32)


def write_talking_video(path: str | Path, seconds: float, fps: float, width: int, height: int,
                        audio: bool = True, audio_level: float = 0.3, face_frac: float = 0.5, seed: int = 0) -> Path:
    """A raw talking-head-like video through PyAV (H.264 + AAC), container from the suffix.

    Args:
        path: output file (.mp4, .mkv, .mov).
        seconds: length.
        fps: native frame rate.
        width: W (even).
        height: H (even).
        audio: include an audio stream.
        audio_level: amplitude (0 = silent stream).
        face_frac: face size, see `talking_frames`.
        seed: variation.
    """
    from lit_avatar.data.media import write_video

    frames = talking_frames(int(round(seconds * fps)), width, height, face_frac, seed)
    sound = speech_like(seconds, level=audio_level, seed=seed) if audio else None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, fps=fps, audio=sound, crf=23)
    return Path(path)


def write_toy_detector(path: str | Path, input_hw: tuple[int, int] = (64, 64)) -> Path:
    """An ONNX model in the boxes format: the bounding box of skin-red pixels, score = 1 if any.

    Args:
        path: output .onnx file.
        input_hw: the model's fixed input size (the adapter letterboxes into it).
    """
    from onnx import TensorProto, helper, numpy_helper

    h, w = input_hw
    xs = np.arange(w, dtype=np.float32).reshape(1, 1, 1, w)
    ys = np.arange(h, dtype=np.float32).reshape(1, 1, h, 1)
    consts = {"xs": xs, "ys": ys, "big": np.array(1e4, np.float32), "one": np.array(1.0, np.float32),
              "thr": np.array(0.3, np.float32), "start": np.array([0], np.int64), "end": np.array([1], np.int64),
              "axis": np.array([1], np.int64)}
    nodes = [
        helper.make_node("Slice", ["image", "start", "end", "axis"], ["red"]),  # [1,1,H,W]
        helper.make_node("Greater", ["red", "thr"], ["mask_b"]),
        helper.make_node("Cast", ["mask_b"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["mask"], ["cols"], axes=[2], keepdims=1),  # [1,1,1,W]
        helper.make_node("ReduceMax", ["mask"], ["rows"], axes=[3], keepdims=1),  # [1,1,H,1]
        helper.make_node("ReduceMax", ["mask"], ["score"], axes=[1, 2, 3], keepdims=0),  # [1]
    ]
    for axis_name, grid, flags in (("x", "xs", "cols"), ("y", "ys", "rows")):
        nodes += [
            helper.make_node("Sub", ["one", flags], [f"{axis_name}_off"]),
            helper.make_node("Mul", [f"{axis_name}_off", "big"], [f"{axis_name}_pen"]),
            helper.make_node("Add", [grid, f"{axis_name}_pen"], [f"{axis_name}_lo_in"]),
            helper.make_node("ReduceMin", [f"{axis_name}_lo_in"], [f"{axis_name}0"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", [grid, flags], [f"{axis_name}_hi_in"]),
            helper.make_node("ReduceMax", [f"{axis_name}_hi_in"], [f"{axis_name}_hi"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Add", [f"{axis_name}_hi", "one"], [f"{axis_name}1"]),
        ]
    nodes.append(helper.make_node("Concat", ["x0", "y0", "x1", "y1", "score"], ["flat"], axis=0))
    nodes.append(helper.make_node("Unsqueeze", ["flat", "axis0"], ["boxes"]))
    consts["axis0"] = np.array([0], np.int64)
    graph = helper.make_graph(
        nodes, "toy_face_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 5])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    return _save_onnx(graph, path)


# The toy SCRFD's face: a square of TOY_FACE_CELLS x TOY_FACE_CELLS stride-32 cells; its five landmarks as
# fractions of the square (eyes, nose, mouth corners).
TOY_FACE_CELLS = 3
TOY_LANDMARKS = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32)


def write_toy_scrfd(path: str | Path, input_hw: tuple[int, int] = (256, 256)) -> Path:
    """An ONNX model in insightface's SCRFD layout (9 outputs: scores, boxes, landmarks at strides 8, 16,
    32; 2 anchors per cell) that finds red-dominant squares: the score of a stride-32 anchor is the mean of
    (R - B) of the network input over the 3x3 cells around it, so only a reddish square of 3x3 cells
    aligned to the grid reaches 0.5, at its centre cell, whose box and landmarks then cover it exactly.
    A bluish square scores high only when the channels are swapped: the model tells RGB from BGR input.

    Args:
        path: output .onnx file.
        input_hw: the model's fixed input size (multiples of 32).
    """
    from onnx import TensorProto, helper, numpy_helper

    h, w = input_hw
    side = 32 * TOY_FACE_CELLS
    consts = {"c0": np.array([0], np.int64), "c1": np.array([1], np.int64), "c2": np.array([2], np.int64),
              "c3": np.array([3], np.int64), "ax1": np.array([1], np.int64),
              "shape32": np.array([-1, 1], np.int64)}
    nodes = [helper.make_node("Slice", ["image", "c0", "c1", "ax1"], ["red"]),
             helper.make_node("Slice", ["image", "c2", "c3", "ax1"], ["blue"]),
             helper.make_node("Sub", ["red", "blue"], ["diff"]),
             helper.make_node("AveragePool", ["diff"], ["pooled"], kernel_shape=[side, side], strides=[32, 32],
                              pads=[32, 32, 32, 32], count_include_pad=0),
             helper.make_node("Reshape", ["pooled", "shape32"], ["cell_scores"]),
             helper.make_node("Concat", ["cell_scores", "cell_scores"], ["pair"], axis=1),  # 2 anchors per cell
             helper.make_node("Reshape", ["pair", "shape32"], ["score_32"])]
    for stride in (8, 16):
        n = (h // stride) * (w // stride) * 2
        consts[f"score_{stride}"] = np.zeros((n, 1), np.float32)
    # the centre cell's anchor sits on the cell's top-left corner: the square starts one cell before it
    # and ends two cells after it
    n32 = (h // 32) * (w // 32) * 2
    for stride in (8, 16, 32):
        n = (h // stride) * (w // stride) * 2
        box = np.zeros((n, 4), np.float32)
        kps = np.zeros((n, 10), np.float32)
        if stride == 32:
            box[:] = [1, 1, TOY_FACE_CELLS - 1, TOY_FACE_CELLS - 1]
            kps[:] = ((TOY_LANDMARKS * side - 32) / 32).reshape(-1)
        consts[f"bbox_{stride}"], consts[f"kps_{stride}"] = box, kps
    order = ["score_8", "score_16", "score_32", "bbox_8", "bbox_16", "bbox_32", "kps_8", "kps_16", "kps_32"]
    for name in order:
        if name != "score_32":
            nodes.append(helper.make_node("Identity", [f"{name}_c"], [name]))
    shapes = {name: list(consts[name].shape) for name in order if name != "score_32"}
    shapes["score_32"] = [n32, 1]
    initializers = [numpy_helper.from_array(v, k if k not in order else f"{k}_c") for k, v in consts.items()]
    graph = helper.make_graph(
        nodes, "toy_scrfd",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]) for name in order],
        initializer=initializers)
    return _save_onnx(graph, path)


def _save_onnx(graph, path: str | Path) -> Path:
    """Check an opset-13 ONNX graph and write it as a model file (folders made as needed)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return Path(path)
