"""CSIM: similarity alignment to the ArcFace template and cosine similarity through an ONNX stand-in."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from data_tools.faces import decode_scrfd, nms
from eval.csim import ARCFACE_TEMPLATE, ArcFace, align_face, csim, landmarks_from_box, similarity_transform, warp_affine
from eval.faces import crop_square
from lit_avatar.errors import UserError


def _tiny_arcface(path, first_nodes=("Flatten", "MatMul")):
    """A linear 'recognition net' on the flattened 112x112 crop: sensitive to where the face is."""
    w = np.random.default_rng(0).standard_normal((3 * 112 * 112, 16)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["input.1"], ["flat"], axis=1, name=first_nodes[0] + "_0"),
             helper.make_node("MatMul", ["flat", "W"], ["683"], name=first_nodes[1] + "_1")]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 16])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _face_pattern():
    """A smooth 'face' in template space (blobs around the 5 points) in 0-255."""
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float64)
    img = np.zeros((112, 112, 3))
    for k, (x, y) in enumerate(ARCFACE_TEMPLATE):
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 6.0 ** 2))
        img[..., k % 3] += 255 * blob
        img[..., (k + 1) % 3] += 120 * blob
    return np.clip(img + 40, 0, 255)


def test_similarity_transform_recovers_known_transform():
    ang, scale, t = np.deg2rad(20.0), 1.7, np.array([30.0, -12.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    dst = src @ (scale * rot).T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
    np.testing.assert_allclose(landmarks_from_box((0, 0, 112, 112)), ARCFACE_TEMPLATE)


def test_alignment_undoes_a_placement_and_csim(tmp_path):
    arc = ArcFace(_tiny_arcface(tmp_path / "w600k_r50.onnx"))
    assert (arc.mean, arc.std) == (127.5, 127.5)
    pattern = _face_pattern()
    # place the face in a larger frame: rotate 10 degrees, scale 1.5, shift
    ang = np.deg2rad(10.0)
    a = 1.5 * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    place = np.concatenate([a, np.array([[50.0], [30.0]])], 1)
    frame = warp_affine(pattern, place, (220, 260))
    lms = ARCFACE_TEMPLATE @ a.T + place[:, 2]
    aligned = align_face(frame, lms)
    inner = (slice(20, 100), slice(20, 100))
    assert np.abs(aligned[inner] - pattern[inner]).mean() < 3.0
    frames = np.stack([frame, frame])
    wrong = lms + np.array([25.0, 10.0])
    sims = csim(arc, pattern, ARCFACE_TEMPLATE, frames, np.stack([lms, wrong]))
    assert sims.shape == (2,)
    assert sims[0] > 0.99
    assert sims[1] < sims[0] - 0.05


def test_raw_pixel_graphs_are_not_normalised(tmp_path):
    arc = ArcFace(_tiny_arcface(tmp_path / "raw.onnx", first_nodes=("Sub", "Mul")))
    assert (arc.mean, arc.std) == (0.0, 1.0)
    with pytest.raises(UserError, match="not found; expected an ArcFace ONNX file"):
        ArcFace(tmp_path / "nothing.onnx")


def test_crop_square_geometry():
    frames = np.zeros((1, 100, 100, 3), np.float32)
    frames[0, 40:60, 40:60] = 255  # the face box itself
    crops = crop_square(frames, np.array([40, 40, 60, 60]), size=28, crop_scale=0.4)
    # bs = 10, half side 14: square x in [36, 64), y in [40, 68): the box fills the top-centre 20x20 of 28x28
    assert crops.shape == (1, 28, 28, 3)
    assert crops[0, 5, 14, 0] == 255 and crops[0, 25, 14, 0] == 0 and crops[0, 5, 1, 0] == 0
    edge = crop_square(frames, np.array([-20, -20, 0, 0]), size=8, pad_value=110)
    assert edge[0, 0, 0, 0] == 110


def test_decode_scrfd_planted_face():
    size, strides, na = 64, (8, 16, 32), 2
    scores = [np.zeros(((size // s) ** 2 * na, 1), np.float32) for s in strides]
    boxes = [np.zeros(((size // s) ** 2 * na, 4), np.float32) for s in strides]
    kps = [np.zeros(((size // s) ** 2 * na, 10), np.float32) for s in strides]
    # stride 16, grid 4x4: location (x=2, y=1) -> centre (32, 16); anchor 1 of that location
    idx = (1 * 4 + 2) * na + 1
    scores[1][idx] = 0.9
    scores[1][idx - 1] = 0.8  # its twin anchor, same box: suppressed by NMS
    boxes[1][idx] = boxes[1][idx - 1] = [1.0, 0.5, 1.5, 2.0]  # distances in strides: l, t, r, b
    kps[1][idx] = np.arange(10) * 0.1
    found, marks = decode_scrfd(scores + boxes + kps, (size, size), 0.5)
    keep = nms(found, 0.4)
    np.testing.assert_allclose(found[keep, :4], [[16.0, 8.0, 56.0, 48.0]])
    np.testing.assert_allclose(found[keep, 4], [0.9], rtol=1e-6)
    np.testing.assert_allclose(marks[keep][0], np.array([32.0, 16.0]) + (np.arange(10) * 1.6).reshape(5, 2), rtol=1e-5)


def test_onnx_detector_letterbox_and_decode(tmp_path):
    """A constant-output ONNX 'SCRFD' at 64 px: the planted box comes back in frame pixels."""
    from data_tools.faces import OnnxFaceDetector

    size, strides, na = 64, (8, 16, 32), 2
    outs = {}
    for s in strides:
        n = (size // s) ** 2 * na
        score, box, kps = np.zeros((n, 1), np.float32), np.zeros((n, 4), np.float32), np.zeros((n, 10), np.float32)
        if s == 16:
            idx = (1 * 4 + 2) * na  # centre (32, 16)
            score[idx], box[idx] = 0.95, [1.0, 0.5, 1.5, 2.0]
            kps[idx] = np.tile([0.5, 1.0], 5)
        outs[f"score_{s}"], outs[f"bbox_{s}"], outs[f"kps_{s}"] = score, box, kps
    order = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in strides]
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(outs[name], name + "_v"))
             for name in order]
    graph = helper.make_graph(nodes, "const_scrfd",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(outs[n].shape)) for n in order])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "det_10g.onnx"))
    det = OnnxFaceDetector(str(tmp_path / "det_10g.onnx"))
    boxes, kps = det.detect_with_landmarks(np.zeros((96, 128, 3), np.uint8))  # letterbox scale 64/128 = 0.5
    np.testing.assert_allclose(boxes[0, :4], [32.0, 16.0, 112.0, 96.0], rtol=1e-6)
    np.testing.assert_allclose(kps[0], np.tile([[64.0 + 16.0, 32.0 + 32.0]], (5, 1)), rtol=1e-6)
