"""What the installed ONNX Runtime accepts, probed rather than assumed, and opset conversion.

onnx 1.23 writes IR 14 by default while ONNX Runtime 1.31 loads at most IR 13 (1.32 loads 14): the only
reliable answer for "which IR version may we write" is to ask the runtime once, with a one-node model.
"""

from __future__ import annotations

import functools
import logging

import onnx
import onnx_ir as ir
from onnx import helper

from onnxq.errors import OpsetError

logger = logging.getLogger(__name__)

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _tiny_model(ir_version: int, opset: int) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model.SerializeToString()


def _ort_loads(model_bytes: bytes) -> bool:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any refusal means "not supported"
        return False
    return True


@functools.cache
def ort_max_ir_version() -> int:
    """Highest IR version the installed ONNX Runtime loads (capped at what onnx writes)."""
    for version in range(onnx.IR_VERSION, 6, -1):
        if _ort_loads(_tiny_model(version, 13)):
            return version
    return 7


@functools.cache
def ort_max_opset() -> int:
    """Highest default-domain opset the installed ONNX Runtime loads (capped at what onnx knows)."""
    ir_version = ort_max_ir_version()
    for opset in range(onnx.defs.onnx_opset_version(), 6, -1):
        if _ort_loads(_tiny_model(ir_version, opset)):
            return opset
    return 7


def target_ir_version() -> int:
    """The newest IR version both onnx and the installed ORT accept: the ceiling of what onnxq writes."""
    return min(onnx.IR_VERSION, ort_max_ir_version())


def output_ir_version(model: ir.Model) -> int:
    """The IR version to write: the lowest that holds the model (its input IR, what its opsets need, 10 for
    node metadata), so older runtimes (ORT ≤ 1.31 reads at most IR 13, TensorRT and QNN lag further) still
    load it; never above what the installed ORT accepts."""
    needed = max(model.ir_version or 3, helper.find_min_ir_version_for(
        [helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()],
        ignore_unknown=True,
    ))
    if any(node.metadata_props for node in model.graph):
        needed = max(needed, 10)
    return min(needed, target_ir_version())


def default_opset(model: ir.Model) -> int:
    for domain in _DEFAULT_DOMAINS:
        if domain in model.opset_imports:
            return model.opset_imports[domain]
    raise OpsetError("the model imports no default-domain ('ai.onnx') opset")


def normalize_opset_imports(model: ir.Model) -> None:
    """Spell the default domain as '' everywhere (some exporters write 'ai.onnx')."""
    if "ai.onnx" in model.opset_imports:
        version = model.opset_imports.pop("ai.onnx")
        model.opset_imports[""] = max(version, model.opset_imports.get("", 0))
    for node in model.graph.all_nodes() if hasattr(model.graph, "all_nodes") else model.graph:
        if node.domain == "ai.onnx":
            node.domain = ""


def upgrade_opset(model: ir.Model, target: int) -> bool:
    """Convert the model's default-domain opset up to ``target`` with onnx's version converter, in place.

    The converter works on protos: it gets a weightless copy, and the converted graph is moved back into
    ``model`` with the original weight tensors, so this stays cheap for large models. Returns whether the
    opset changed.
    """
    current = default_opset(model)
    if current >= target:
        return False
    if target > ort_max_opset():
        raise OpsetError(
            f"opset {target} is newer than the installed ONNX Runtime supports (max {ort_max_opset()})"
        )
    from onnx import version_converter

    # Convert a weightless copy: large weights are swapped for external-data references (dtype and dims
    # kept, bytes never read), so serialization neither copies them nor hits the 2 GB protobuf limit.
    node_metadata = {n.name: dict(n.metadata_props) for n in model.graph if n.name and n.metadata_props}
    weights = {name: value.const_value for name, value in model.graph.initializers.items()}
    for value in model.graph.initializers.values():
        if value.const_value is not None and value.const_value.size > 1024:
            value.const_value = _placeholder_like(value.const_value, value.name)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for name, value in model.graph.initializers.items():
            value.const_value = weights[name]
    try:
        converted = version_converter.convert_version(proto, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        raise OpsetError(
            f"onnx's version converter cannot convert this model from opset {current} to {target}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    new_model = ir.serde.deserialize_model(converted)
    for name, value in new_model.graph.initializers.items():
        if name in weights:
            value.const_value = weights[name]
    # The converter drops node metadata (pattern tags, quantizer notes): carry it over by node name.
    for node in new_model.graph:
        if node.name in node_metadata:
            node.metadata_props.update(node_metadata[node.name])
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for([helper.make_opsetid("", target)]))
    model.graph = new_model.graph
    model.functions.clear()
    model.functions.update(new_model.functions)
    logger.info("raised the default-domain opset from %d to %d", current, target)
    return True


def _placeholder_like(tensor: ir.TensorProtocol, name: str) -> ir.ExternalTensor:
    """A reference to bytes that do not exist, with the tensor's dtype and shape: the converter reads
    shapes and types only."""
    return ir.ExternalTensor(
        "__onnxq_placeholder__", offset=0, length=tensor.nbytes, dtype=tensor.dtype, shape=tensor.shape,
        name=name, base_dir="",
    )
