"""The first node names of an ONNX graph, read from the file's protobuf wire format itself.

Why not `onnx.load`: `onnx` is a dev-only dependency, and onnxruntime (a main one) does not expose the
graph's nodes. What is read here is small and fixed by the ONNX spec: ModelProto.graph (field 7) ->
GraphProto.node (field 1, written before the initializers) -> NodeProto.name (field 3). The file is
memory-mapped, so a 170 MB model is not read into memory to find its first few nodes.
"""
from __future__ import annotations

import mmap
from collections.abc import Iterator

from lit_avatar.errors import UserError

__all__ = ["first_node_names"]

_MODEL_GRAPH, _GRAPH_NODE, _NODE_NAME = 7, 1, 3


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message in buf[start:end]; other
    wire types are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise ValueError("field runs past its message")
            yield field, pos, pos + size
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != end:
        raise ValueError("message ends inside a field")


def _node_names(buf, count: int) -> list[str]:
    graph = next(((s, e) for f, s, e in _fields(buf, 0, len(buf)) if f == _MODEL_GRAPH), None)
    if graph is None:
        raise ValueError("no graph in the model")
    names = []
    for field, start, end in _fields(buf, *graph):
        if field != _GRAPH_NODE:
            continue
        name = next((bytes(buf[s:e]) for f, s, e in _fields(buf, start, end) if f == _NODE_NAME), b"")
        names.append(name.decode("utf-8"))
        if len(names) == count:
            break
    return names


def first_node_names(path: str, count: int = 8) -> list[str]:
    """Names of the first `count` nodes of the ONNX model at `path` (fewer if it has fewer), in graph order.

    Raises:
        UserError: the file is empty or not an ONNX model (one line naming it).
    """
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return _node_names(mapped, count)  # mmap: indexing gives ints, slicing copies bytes
    except (ValueError, UnicodeDecodeError, OSError) as err:  # mmap of an empty file: ValueError
        raise UserError(f"{path}: cannot read its ONNX graph ({err}); expected an ArcFace ONNX model") from None
