"""``onnxq inspect``: what a model is, without running it.

Opset and IR version, inputs/outputs with dims (dynamic ones marked), op histogram, parameter count and
bytes by dtype, external data files, and for quantized models which ops run quantized at which precision
(read from the QuantizeLinear/DequantizeLinear pairs around them) plus what onnxq recorded in metadata.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx_ir as ir


_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
#: metadata_props key under which ``onnxq quantize`` records its decisions (a JSON document).
QUANT_METADATA_KEY = "onnxq.quantization"


@dataclass
class TensorInfo:
    name: str
    dtype: str
    dims: list[str]

    @property
    def dynamic(self) -> bool:
        return any(not d.isdigit() for d in self.dims)


@dataclass
class QuantizedOp:
    node: str
    op_type: str
    activation: str
    weight: str


@dataclass
class ModelSummary:
    path: str | None
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_histogram: dict[str, int]
    node_count: int
    parameters: dict[str, dict[str, int]]  # dtype -> {"count": n, "bytes": b}
    external_data: list[str]
    quantized_ops: list[QuantizedOp] = field(default_factory=list)
    quantization_record: dict | None = None

    def to_json(self) -> str:
        data = asdict(self)
        for key in ("inputs", "outputs"):
            for item, info in zip(data[key], getattr(self, key), strict=True):
                item["dynamic"] = info.dynamic
        return json.dumps(data, indent=2, sort_keys=True)


def _dims(value: ir.Value) -> list[str]:
    if value.shape is None:
        return ["?"]
    return [str(d) if isinstance(d, int) else (str(d.value) if d.value is not None else "?") for d in value.shape]


def _tensor_info(value: ir.Value) -> TensorInfo:
    dtype = value.dtype.name.lower() if value.dtype is not None else "?"
    return TensorInfo(value.name or "", dtype, _dims(value))


def _dq_dtype(value: ir.Value | None) -> str | None:
    """The quantized dtype feeding a DequantizeLinear that produces ``value``, if any."""
    if value is None:
        return None
    producer = value.producer()
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    source = producer.inputs[0]
    if source is None:
        return "?"
    if source.dtype is not None:
        return source.dtype.name.lower()
    # Without shape inference a QuantizeLinear output has no type yet: it is the zero point's type,
    # or the output_dtype attribute (opset 21), or uint8 by default.
    quantize = source.producer()
    if quantize is not None and quantize.op_type == "QuantizeLinear":
        if len(quantize.inputs) > 2 and quantize.inputs[2] is not None and quantize.inputs[2].dtype is not None:
            return quantize.inputs[2].dtype.name.lower()
        attr = quantize.attributes.get("output_dtype")
        return ir.DataType(attr.value).name.lower() if attr is not None else "uint8"
    return "?"


def _is_constant(value: ir.Value | None) -> bool:
    if value is None:
        return False
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def _feeds_quantize(value: ir.Value) -> bool:
    uses = list(value.uses())
    return bool(uses) and all(use.node.op_type == "QuantizeLinear" for use in uses)


def _quantized_ops(model: ir.Model) -> list[QuantizedOp]:
    """Ops that form a QDQ node unit: DequantizeLinear on their inputs and either a quantized weight or
    QuantizeLinear on every output (an op between DQ and float consumers runs in float)."""
    ops = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in _QDQ or node.domain not in ("", "ai.onnx"):
            continue
        activation, weight = None, None
        for value in node.inputs:
            dtype = _dq_dtype(value)
            if dtype is None:
                continue
            if value is not None and _is_constant(value.producer().inputs[0]):
                weight = weight or dtype
            else:
                activation = activation or dtype
        quantized_out = all(_feeds_quantize(v) for v in node.outputs if v is not None)
        if (activation or weight) and (weight or quantized_out):
            ops.append(QuantizedOp(node.name or "", node.op_type, activation or "float", weight or "-"))
    return ops


def summarize(model: ir.Model, path: str | None = None) -> ModelSummary:
    histogram = Counter(
        (node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}")
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
    )
    parameters: dict[str, dict[str, int]] = {}
    external: set[str] = set()
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        entry = parameters.setdefault(tensor.dtype.name.lower(), {"count": 0, "bytes": 0})
        entry["count"] += tensor.size
        entry["bytes"] += tensor.nbytes
        if isinstance(tensor, ir.ExternalTensor):
            external.add(tensor.location)
    record = model.metadata_props.get(QUANT_METADATA_KEY)
    return ModelSummary(
        path=path,
        ir_version=model.ir_version,
        opsets=dict(sorted(model.opset_imports.items())),
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        inputs=[_tensor_info(v) for v in model.graph.inputs if not v.is_initializer()],
        outputs=[_tensor_info(v) for v in model.graph.outputs],
        op_histogram=dict(histogram.most_common()),
        node_count=sum(histogram.values()),
        parameters=dict(sorted(parameters.items())),
        external_data=sorted(external),
        quantized_ops=_quantized_ops(model),
        quantization_record=json.loads(record) if record else None,
    )

