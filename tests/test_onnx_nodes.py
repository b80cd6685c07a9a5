"""ArcFace's input normalisation is read from the ONNX file without `onnx` (a dev-only dependency), with
`onnx.load` as the reference; a file that is no ONNX model is refused in one line, never guessed at."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from eval.onnx_nodes import first_node_names
from lit_avatar.errors import UserError


def _graph(path, names: list[str]) -> str:
    """A chain of Identity/Sub/Mul/... nodes named as given, then a MatMul with a 200 kB initializer."""
    nodes, last = [], "input.1"
    for i, name in enumerate(names):
        op = "Sub" if name.startswith(("Sub", "_minus")) else "Mul" if name.startswith(("Mul", "_mul")) else "Relu"
        inputs = [last, "c"] if op in ("Sub", "Mul") else [last]
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=name))
        last = f"t{i}"
    nodes.append(helper.make_node("Flatten", [last], ["flat"], axis=1, name="Flatten_end"))
    nodes.append(helper.make_node("MatMul", ["flat", "W"], ["out"], name="MatMul_end"))
    w = np.random.default_rng(0).standard_normal((3 * 112 * 112, 4)).astype(np.float32)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                                         ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
                              initializer=[numpy_helper.from_array(w, "W"),
                                           numpy_helper.from_array(np.float32(127.5), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="test")
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


CASES = {"raw pixels": ["Sub_0", "Mul_1"], "mxnet style": ["_minusscalar0", "_mulscalar0", "conv_0"],
         "normalised input": ["conv_0", "bn_0"], "sub too late": [f"Relu_{i}" for i in range(8)] + ["Sub_9", "Mul_9"],
         "unnamed": ["", "", ""], "utf-8": ["Sub_ü", "Mul_ß"]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_node_names_match_onnx(tmp_path, case):
    path = _graph(tmp_path / "m.onnx", CASES[case])
    reference = [node.name for node in onnx.load(path).graph.node[:8]]
    assert first_node_names(path, 8) == reference
    assert first_node_names(path, 100) == [node.name for node in onnx.load(path).graph.node]


def test_arcface_normalisation_without_onnx(tmp_path, monkeypatch):
    """With `onnx` not importable (a plain install), the rule still reads the graph: no guess."""
    from eval.csim import ArcFace

    raw = _graph(tmp_path / "raw.onnx", CASES["raw pixels"])
    normalised = _graph(tmp_path / "norm.onnx", CASES["normalised input"])
    late = _graph(tmp_path / "late.onnx", CASES["sub too late"])
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert (ArcFace(raw).mean, ArcFace(raw).std) == (0.0, 1.0)
    assert (ArcFace(normalised).mean, ArcFace(normalised).std) == (127.5, 127.5)
    assert (ArcFace(late).mean, ArcFace(late).std) == (127.5, 127.5)  # insightface looks at the first 8 only


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", b"\x3a\xff\xff\xff\xff\x0f", bytes(range(256))])
def test_files_that_are_no_onnx_model_are_refused(tmp_path, content):
    from eval.csim import ArcFace

    path = tmp_path / "w600k_r50.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"w600k_r50\.onnx: cannot read its ONNX graph .*expected an ArcFace ONNX"):
        ArcFace(path)
