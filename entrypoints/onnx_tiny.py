"""A one-node ONNX model (y = x + x) encoded by hand.

Why by hand: the doctor must run a real ONNX Runtime inference inside images that carry
onnxruntime but not the ``onnx`` package; the protobuf wire format needs 30 lines.
The tests check this model with ``onnx.checker``.
"""

from __future__ import annotations


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _tensor_value_info(name: str, n: int) -> bytes:
    dim = _field(1, _field(1, n))                         # TensorShapeProto.dim {dim_value}
    tensor = _field(1, 1) + _field(2, dim)                # elem_type FLOAT, shape
    return _field(1, name) + _field(2, _field(1, tensor))  # name, type{tensor_type}


def add_model(n: int = 4, opset: int = 13) -> bytes:
    """Serialized ModelProto computing ``y = x + x`` on a float32 vector of length ``n``."""
    node = _field(1, "x") + _field(1, "x") + _field(2, "y") + _field(3, "add") + _field(4, "Add")
    graph = (_field(1, node) + _field(2, "doctor")
             + _field(11, _tensor_value_info("x", n)) + _field(12, _tensor_value_info("y", n)))
    return (_field(1, 8) + _field(2, "entrypoints.doctor")          # ir_version, producer
            + _field(7, graph) + _field(8, _field(1, "") + _field(2, opset)))
