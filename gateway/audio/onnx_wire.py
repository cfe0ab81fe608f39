"""ONNX files read and rewritten at the protobuf wire level, with onnx.proto's field numbers.

The gateway reads a few constants out of silero's graph and drops a few nodes from smart-turn's;
the `onnx` package (and its protobuf runtime) would be a dependency for these ~100 lines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

# onnx.proto field numbers
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_OUTPUT = 1, 5, 12
NODE_INPUT, NODE_OUTPUT, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 4, 5, 7
ATTRIBUTE_TENSOR, ATTRIBUTE_GRAPH = 5, 6
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW_DATA = 1, 2, 8, 9
VALUE_INFO_NAME = 1
FLOAT = 1

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


class OnnxFileError(Exception):
    """The bytes are not the ONNX graph the caller expected."""


def nodes(graph: memoryview) -> Iterator[memoryview]:
    """Every node of a graph and of its nodes' subgraphs (`If` arms), depth first."""
    for node in repeated(graph, GRAPH_NODE):
        yield node
        for attribute in repeated(node, NODE_ATTRIBUTE):
            for subgraph in repeated(attribute, ATTRIBUTE_GRAPH):
                yield from nodes(subgraph)


def entries(message: memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """(field number, wire type, value): varints as ints, everything else as bytes."""
    i = 0
    while i < len(message):
        key, i = _varint(message, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, i = _varint(message, i)
            yield number, wire_type, value
        elif wire_type == LENGTH_DELIMITED:
            length, i = _varint(message, i)
            yield number, wire_type, message[i : i + length]
            i += length
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            yield number, wire_type, message[i : i + size]
            i += size
        else:
            raise OnnxFileError(f"unexpected protobuf wire type {wire_type}")


def repeated(message: memoryview, number: int) -> Iterator[memoryview]:
    for field, _, value in entries(message):
        if field == number and isinstance(value, memoryview):
            yield value


def field(message: memoryview, number: int) -> memoryview:
    return next(repeated(message, number), memoryview(b""))


def string(message: memoryview, number: int) -> str:
    return bytes(field(message, number)).decode()


def strings(message: memoryview, number: int) -> list[str]:
    return [bytes(value).decode() for value in repeated(message, number)]


def varints(message: memoryview, number: int) -> Iterator[int]:
    """A repeated integer field, whether its writer packed it or not."""
    for field_number, _, value in entries(message):
        if field_number != number:
            continue
        if isinstance(value, int):
            yield value
            continue
        i = 0
        while i < len(value):
            item, i = _varint(value, i)
            yield item


def varint_field(message: memoryview, number: int) -> int | None:
    return next(varints(message, number), None)


def softmax_unquantized(model: bytes) -> bytes:
    """`model` with each QDQ-quantized Softmax's output left in float.

    A quantizing export wraps Softmax in DequantizeLinear -> Softmax -> QuantizeLinear ->
    DequantizeLinear, which onnxruntime fuses into one QLinearSoftmax (uint8 in and out).
    Without the QuantizeLinear -> DequantizeLinear after it, the Softmax runs in float and
    feeds its float probabilities to the next MatMul: the scores lose a rounding step, and
    smart-turn v3.2 takes ~30 instead of ~37 ms here (onnxruntime's QLinearSoftmax took ~2 ms
    per call over its 6 x 400 x 400 attention scores)."""
    graph = _Graph(field(memoryview(model), MODEL_GRAPH))
    renamed: dict[str, str] = {}  # a dropped DequantizeLinear's output -> the Softmax's
    dropped: set[int] = set()
    for i, op in enumerate(graph.ops):
        source = graph.producer.get(graph.inputs[i][0]) if op == "Softmax" else None
        if source is None or graph.ops[source] != "DequantizeLinear":
            continue
        quantize = graph.only_consumer(i, "QuantizeLinear")
        dequantize = None if quantize is None else graph.only_consumer(quantize, "DequantizeLinear")
        if quantize is None or dequantize is None:
            continue
        renamed[graph.outputs[dequantize][0]] = graph.outputs[i][0]
        dropped.update((quantize, dequantize))
    if not dropped:
        return model
    pieces: list[bytes | memoryview] = []
    for number, wire_type, value in entries(memoryview(model)):
        if number == MODEL_GRAPH:
            nodes = graph.without(dropped, renamed)
            pieces += [_key(number, wire_type), _encode_varint(sum(map(len, nodes))), *nodes]
        else:
            pieces += _entry(number, wire_type, value)
    return b"".join(pieces)


class _Graph:
    """A graph's top-level nodes by position: op types, input and output names."""

    def __init__(self, graph: memoryview) -> None:
        self._graph = graph
        nodes = list(repeated(graph, GRAPH_NODE))
        self.ops = [string(n, NODE_OP_TYPE) for n in nodes]
        self.inputs = [strings(n, NODE_INPUT) for n in nodes]
        self.outputs = [strings(n, NODE_OUTPUT) for n in nodes]
        self.producer = {name: i for i, names in enumerate(self.outputs) for name in names}
        self._consumers: dict[str, list[int]] = {}
        for i, names in enumerate(self.inputs):
            for name in names:
                self._consumers.setdefault(name, []).append(i)
        self._graph_outputs = {string(v, VALUE_INFO_NAME) for v in repeated(graph, GRAPH_OUTPUT)}

    def only_consumer(self, node: int, op: str) -> int | None:
        """The one node that reads `node`'s output, if it is an `op` and the output is not
        also one of the graph's."""
        output = self.outputs[node][0] if self.outputs[node] else ""
        readers = self._consumers.get(output, [])
        if len(readers) != 1 or self.ops[readers[0]] != op or output in self._graph_outputs:
            return None
        return readers[0]

    def without(self, dropped: set[int], renamed: dict[str, str]) -> list[bytes | memoryview]:
        """The graph's bytes, in pieces, without the `dropped` nodes (and initializers only
        they read), the other nodes' inputs `renamed`."""
        read = Counter(
            name for i, names in enumerate(self.inputs) if i not in dropped for name in names
        )
        out: list[bytes | memoryview] = []
        position = 0  # the n-th node entry is node n
        for number, wire_type, value in entries(self._graph):
            if number == GRAPH_NODE and isinstance(value, memoryview):
                node, position = position, position + 1
                if node in dropped:
                    continue
                if any(name in renamed for name in self.inputs[node]):
                    value = memoryview(_with_inputs(value, renamed))
            if (
                number == GRAPH_INITIALIZER
                and isinstance(value, memoryview)
                and not read[string(value, TENSOR_NAME)]
            ):
                continue
            out += _entry(number, wire_type, value)
        return out


def _with_inputs(node: memoryview, renamed: dict[str, str]) -> bytes:
    out: list[bytes | memoryview] = []
    for number, wire_type, value in entries(node):
        if number == NODE_INPUT and isinstance(value, memoryview):
            name = bytes(value).decode()
            value = memoryview(renamed.get(name, name).encode())
        out += _entry(number, wire_type, value)
    return b"".join(out)


def _entry(number: int, wire_type: int, value: memoryview | int) -> list[bytes | memoryview]:
    """A field's bytes, in pieces: the value itself is not copied."""
    if isinstance(value, int):
        return [_key(number, wire_type), _encode_varint(value)]
    if wire_type == LENGTH_DELIMITED:
        return [_key(number, wire_type), _encode_varint(len(value)), value]
    return [_key(number, wire_type), value]


def _key(number: int, wire_type: int) -> bytes:
    return _encode_varint(number << 3 | wire_type)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
