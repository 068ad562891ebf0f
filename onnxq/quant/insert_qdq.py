"""Q/DQ insertion: turn a ``QuantPlan`` plus calibrated parameters into a standard QDQ ONNX model.

* Activation T: ``T → QuantizeLinear → DequantizeLinear → T_dq``; every node that read T reads T_dq. One
  pair per tensor, shared by all consumers, as runtimes expect. A graph output in the plan (full-offload
  targets) becomes the DQ output under T's name, and the float producer's tensor is renamed ``T_float``.
* Weight W (per-channel on the op's output-channel axis): stored quantized, ``DequantizeLinear(W_q, s, z,
  axis)`` feeds the op. An LPBQ weight (per-block, block scales k·c) is a blocked DequantizeLinear whose
  scale is the float32 k·c, or, with ``int_block_scales``, ``DequantizeLinear(k uint8, c, 0)``'s output.
* Bias b of Conv/Gemm: int32 with ``s_b = s_act · s_w`` (LPBQ: ``s_act · c``) and zero point 0, so runtimes
  fuse it exactly.

The model's default opset is raised first when a spec needs it (per-channel 13, 16/4-bit 21).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxq import runtime_compat
from onnxq.errors import OpsetError
from onnxq.quant import bias_correction, qparams
from onnxq.quant.annotate import QuantPlan
from onnxq.quant.spec import Granularity, QuantSpec
from onnxq.session_files import unmap

logger = logging.getLogger(__name__)

INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class TensorQParams:
    scale: np.ndarray
    zero_point: np.ndarray
    spec: QuantSpec


@dataclass(frozen=True)
class Conversion:
    """``node`` reads input ``index`` (tensor ``tensor``) through a second Q/DQ pair with ``params``."""

    tensor: str
    node: ir.Node
    index: int
    params: TensorQParams


class _Names:
    """Deterministic unique names for new values, nodes and initializers."""

    def __init__(self, model: ir.Model):
        self.taken = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            self.taken.add(node.name)
            self.taken.update(v.name for v in node.outputs)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def _const(model: ir.Model, names: _Names, base: str, array: np.ndarray) -> ir.Value:
    name = names(base)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape, value.dtype = value.const_value.shape, value.const_value.dtype
    model.graph.register_initializer(value)
    return value


def _value_index(model: ir.Model) -> dict[str, ir.Value]:
    values = {v.name: v for v in model.graph.inputs}
    for node in model.graph:
        for out in node.outputs:
            values[out.name] = out
    return values


def required_opset(plan: QuantPlan) -> int:
    needed = 10
    for spec in plan.activation_specs().values():
        needed = max(needed, spec.min_opset)
    for use in plan.weights() + plan.static_inputs():
        needed = max(needed, use.spec.min_opset)
    if plan.biases():
        needed = max(needed, 13)
    if plan.dynamic_annotations():
        needed = max(needed, 11)  # DynamicQuantizeLinear
    return needed


def insert_qdq(model: ir.Model, plan: QuantPlan, activations: dict[str, TensorQParams],
               conversions: list[Conversion] | None = None,
               private_readers: Collection[tuple[ir.Node, int]] = (),
               channel_means: Mapping[str, np.ndarray] | None = None) -> int:
    """Insert Q/DQ in place for ``activations`` (name → params) and the plan's weights and biases.

    ``private_readers`` (node, input index) read their quantized input through a DequantizeLinear of their
    own whose scale is per-channel shaped (see ``CapabilityTable.requantizes_float_weights``).
    ``channel_means`` (activation name → per-channel mean): a layer reading one of these gets its bias
    corrected for the mean shift its rounded weights cause (``bias_correction``).
    Returns the number of Q/DQ nodes added. The plan's node references must belong to ``model``.
    """
    private = {(id(node), index) for node, index in private_readers}
    # Read the plan before touching the graph: weights stop looking constant once DQ feeds them.
    weight_uses, bias_uses = plan.weights() + plan.static_inputs(), plan.biases()
    needed = required_opset(plan)
    if runtime_compat.default_opset(model) < needed:
        # Raising the opset rebuilds the graph, which would orphan the plan's node references.
        raise OpsetError(
            f"the plan needs opset {needed} (per-channel/16-bit Q/DQ); raise the model's opset before annotating"
        )
    names = _Names(model)
    values = _value_index(model)
    added = 0
    weight_scales: dict[tuple[int, int], np.ndarray] = {}

    for name in sorted(activations):
        value = values.get(name)
        if value is None:
            logger.warning("tensor '%s' of the plan is not in the graph; skipped", name)
            continue
        params = activations[name]
        uses = [(use.node, use.idx) for use in value.uses()]
        output_slots = [i for i, out in enumerate(model.graph.outputs) if out is value]
        if not uses and not output_slots:
            continue
        q, dq = _qdq_pair(model, names, value, name, params)
        producer = value.producer()
        if producer is None:
            model.graph.insert_before(next(iter(model.graph)), [q, dq])
        else:
            model.graph.insert_after(producer, [q, dq])
        for node, index in uses:
            if (id(node), index) not in private:
                node.replace_input_with(index, dq.outputs[0])
                continue
            own = _channel_shaped_dq(model, names, q.outputs[0], value, name, params, _input_channels(node))
            if own is None:
                node.replace_input_with(index, dq.outputs[0])
                continue
            model.graph.insert_before(node, [own])
            node.replace_input_with(index, own.outputs[0])
            added += 1
        if output_slots:
            # The graph output becomes the dequantized tensor and keeps the output's name, so callers
            # feeding and reading by name see the same interface.
            float_name = names(f"{name}_float")
            dq_name = dq.outputs[0].name
            value.name = float_name
            dq.outputs[0].name = name
            names.taken.discard(dq_name)
            for slot in output_slots:
                model.graph.outputs[slot] = dq.outputs[0]
        added += 2

    for conversion in sorted(conversions or [], key=lambda c: (c.tensor, c.node.name, c.index)):
        source = conversion.node.inputs[conversion.index]
        params = conversion.params
        q, dq = _qdq_pair(model, names, source, f"{conversion.tensor}_{params.spec.dtype.label}", params)
        model.graph.insert_before(conversion.node, [q, dq])
        conversion.node.replace_input_with(conversion.index, dq.outputs[0])
        added += 2

    min_scales = _bias_safe_weight_scales(bias_uses, activations)
    layer_means = _layer_means(bias_uses, channel_means or {})
    bias_shifts: dict[tuple[int, int], np.ndarray] = {}
    for use in sorted(weight_uses, key=lambda u: (u.node.name, u.input_index)):
        weight = use.node.inputs[use.input_index]
        array = weight.const_value.numpy()
        if use.spec.granularity is Granularity.PER_TENSOR and not use.spec.symmetric:
            # a constant activation-like input (full offload): a mask's -3.4e38 becomes -1e4, see SENTINEL
            array = np.clip(array, -qparams.SENTINEL_LIMIT, qparams.SENTINEL_LIMIT) if np.any(
                np.abs(array) >= qparams.SENTINEL) else array
        mean = layer_means.get((id(use.node), use.input_index))
        if use.spec.block_scale_bits is not None:
            nodes, lpbq = _lpbq_weight(model, names, weight, array, use.spec,
                                       min_scales.get((id(use.node), use.input_index)))
            if mean is not None:
                rounded = qparams.dequantize_weight(lpbq.q, lpbq.block_scales, lpbq.zero, use.spec)
                _record_shift(bias_shifts, use, array, rounded, mean)
            model.graph.insert_before(use.node, nodes)
            use.node.replace_input_with(use.input_index, nodes[-1].outputs[0])
            weight_scales[(id(use.node), use.input_index)] = lpbq.channel_scale  # bias scale: s_act · c
            added += len(nodes)
            array = rounded = None
            unmap(weight.const_value)  # quantized: its pages go now, not with the whole build's
            continue
        q_array, scale, zero = qparams.quantize_weight(
            array, use.spec, name=weight.name, min_scale=min_scales.get((id(use.node), use.input_index))
        )
        if mean is not None:
            rounded = qparams.dequantize_weight(q_array, scale, zero, use.spec)
            _record_shift(bias_shifts, use, array, rounded, mean)
        base = weight.name
        attributes = {}
        if use.spec.axis is not None:
            attributes["axis"] = use.spec.axis
        if use.spec.block_size is not None:
            attributes["block_size"] = use.spec.block_size
        q_value = _const(model, names, f"{base}_quantized", q_array)
        scale_value = _const(model, names, f"{base}_scale", scale if scale.ndim else scale.reshape(()))
        zero_value = _const(model, names, f"{base}_zero_point", zero if zero.ndim else zero.reshape(()))
        dq = ir.node("DequantizeLinear", [q_value, scale_value, zero_value], attributes=attributes,
                     name=names(f"{base}_DequantizeLinear"))
        dq.outputs[0].name = names(f"{base}_dequantized")
        _copy_type(weight, dq.outputs[0])
        model.graph.insert_before(use.node, [dq])
        use.node.replace_input_with(use.input_index, dq.outputs[0])
        if use.spec.block_size is None:  # plain per-block weights have no per-channel scale: float bias
            weight_scales[(id(use.node), use.input_index)] = scale
        array = rounded = None
        unmap(weight.const_value)  # quantized: its pages go now, not with the whole build's
        added += 1

    for use in sorted(bias_uses, key=lambda u: u.node.name):
        act = activations.get(use.activation)
        w_scale = weight_scales.get((id(use.node), use.weight_index))
        bias = use.node.inputs[use.input_index]
        shift = bias_shifts.get((id(use.node), use.weight_index))
        if shift is not None and (bias is None or bias.const_value is None or bias.const_value.shape != shift.shape):
            logger.debug("'%s': no bias correction (shapes do not line up)", use.node.name)
            shift = None
        if bias is not None and shift is not None and (act is None or w_scale is None):
            # the bias stays float (per-block weights): it is corrected all the same
            corrected = (bias.const_value.numpy().astype(np.float64) - shift).astype(np.float32)
            use.node.replace_input_with(use.input_index, _const(model, names, f"{bias.name}_corrected", corrected))
            continue
        if act is None or w_scale is None or bias is None:
            continue
        bias_scale = (np.float64(act.scale) * w_scale.astype(np.float64)).astype(np.float32)
        b = bias.const_value.numpy().astype(np.float64)
        if shift is not None:
            b = b - shift
        q = np.round(b / np.where(bias_scale > 0, bias_scale, 1.0))
        if np.any(np.abs(q) > INT32_MAX):
            logger.warning("bias '%s' overflows int32 at scale s_act·s_w; clipped", bias.name)
        q = np.clip(q, -INT32_MAX, INT32_MAX).astype(np.int32)
        base = bias.name
        q_value = _const(model, names, f"{base}_quantized", q)
        scale_value = _const(model, names, f"{base}_scale", bias_scale.reshape(q.shape) if bias_scale.ndim else
                             bias_scale.reshape(()))
        zero_value = _const(model, names, f"{base}_zero_point", np.zeros(q.shape if bias_scale.ndim else (),
                                                                        np.int32))
        attributes = {"axis": 0} if bias_scale.ndim else {}
        dq = ir.node("DequantizeLinear", [q_value, scale_value, zero_value], attributes=attributes,
                     name=names(f"{base}_DequantizeLinear"))
        dq.outputs[0].name = names(f"{base}_dequantized")
        _copy_type(bias, dq.outputs[0])
        model.graph.insert_before(use.node, [dq])
        use.node.replace_input_with(use.input_index, dq.outputs[0])
        added += 1

    _remove_unused_initializers(model)
    return added


def _qdq_pair(model: ir.Model, names: _Names, source: ir.Value, base: str,
              params: TensorQParams) -> tuple[ir.Node, ir.Node]:
    """``source → QuantizeLinear → DequantizeLinear`` with per-tensor ``params`` (nodes not yet inserted)."""
    scale = _const(model, names, f"{base}_scale", np.asarray(params.scale, np.float32).reshape(()))
    zero = _const(model, names, f"{base}_zero_point", np.asarray(params.zero_point).reshape(()))
    q = ir.node("QuantizeLinear", [source, scale, zero], name=names(f"{base}_QuantizeLinear"))
    q.outputs[0].name = names(f"{base}_quantized")
    dq = ir.node("DequantizeLinear", [q.outputs[0], scale, zero], name=names(f"{base}_DequantizeLinear"))
    dq.outputs[0].name = names(f"{base}_dequantized")
    _copy_type(source, dq.outputs[0])
    return q, dq


def _input_channels(node: ir.Node) -> int | None:
    """Size of axis 1 of a Conv/ConvTranspose/Gemm data input, from its constant weight's shape."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None or weight.const_value is None:
        return None
    shape = weight.const_value.shape
    attrs = {name: attr.value for name, attr in node.attributes.items()}
    if node.op_type == "Conv":
        return shape[1] * attrs.get("group", 1)
    if node.op_type == "ConvTranspose":
        return shape[0]
    if node.op_type == "Gemm" and not attrs.get("transA", 0):
        return shape[1] if attrs.get("transB", 0) else shape[0]
    return None


def _channel_shaped_dq(model: ir.Model, names: _Names, quantized: ir.Value, source: ir.Value, base: str,
                       params: TensorQParams, channels: int | None) -> ir.Node | None:
    """A DequantizeLinear equal to the shared one but with the scale repeated along axis 1 (channels)."""
    if not isinstance(channels, int) or channels < 2:
        logger.warning("'%s': channel count unknown or 1, the float reader keeps the shared DequantizeLinear "
                       "(the runtime may quantize its weights per tensor)", source.name)
        return None
    scale = _const(model, names, f"{base}_channel_scale",
                   np.full(channels, np.asarray(params.scale, np.float32).reshape(()), np.float32))
    zero_point = np.asarray(params.zero_point).reshape(())
    zero = _const(model, names, f"{base}_channel_zero_point", np.full(channels, zero_point, zero_point.dtype))
    dq = ir.node("DequantizeLinear", [quantized, scale, zero], attributes={"axis": 1},
                 name=names(f"{base}_float_reader_DequantizeLinear"))
    dq.outputs[0].name = names(f"{base}_float_reader")
    _copy_type(source, dq.outputs[0])
    return dq


def _lpbq_weight(model: ir.Model, names: _Names, weight: ir.Value, array: np.ndarray, spec: QuantSpec,
                 min_scale: np.ndarray | None) -> tuple[list[ir.Node], qparams.LpbqWeight]:
    """DequantizeLinear node(s) of an LPBQ weight, and the quantized weight (its per-channel scale c).

    Float form: ``DQ(W_q, k·c, 0; axis, block_size)``. Integer form (``spec.int_block_scales``): the block
    scales come from ``DQ(k uint8, c, 0; axis=channel_axis)`` feeding that DQ's scale input, the pattern
    ONNX Runtime's QNN EP fuses into one LPBQ (BLOCKWISE_EXPANSION) weight.
    """
    lpbq = qparams.quantize_weight_lpbq(array, spec, name=weight.name, min_scale=min_scale)
    base, nodes = weight.name, []
    if spec.int_block_scales:
        ints = _const(model, names, f"{base}_block_scale_ints", lpbq.block_ints)
        channel = _const(model, names, f"{base}_channel_scale", lpbq.channel_scale)
        zeros = _const(model, names, f"{base}_block_scale_zero_point",
                       np.zeros(lpbq.channel_scale.shape, np.uint8))
        scale_dq = ir.node("DequantizeLinear", [ints, channel, zeros], attributes={"axis": spec.channel_axis},
                           name=names(f"{base}_block_scale_DequantizeLinear"))
        scale_dq.outputs[0].name = names(f"{base}_scale")
        scale_dq.outputs[0].dtype = ir.DataType.FLOAT
        scale_dq.outputs[0].shape = ir.Shape(lpbq.block_ints.shape)
        nodes.append(scale_dq)
        scale_value = scale_dq.outputs[0]
    else:
        scale_value = _const(model, names, f"{base}_scale", lpbq.block_scales)
    q_value = _const(model, names, f"{base}_quantized", lpbq.q)
    zero_value = _const(model, names, f"{base}_zero_point", lpbq.zero)
    dq = ir.node("DequantizeLinear", [q_value, scale_value, zero_value],
                 attributes={"axis": spec.axis, "block_size": spec.block_size},
                 name=names(f"{base}_DequantizeLinear"))
    dq.outputs[0].name = names(f"{base}_dequantized")
    _copy_type(weight, dq.outputs[0])
    nodes.append(dq)
    return nodes, lpbq


def _layer_means(bias_uses, channel_means: Mapping[str, np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
    """(node, weight index) → the per-channel mean of its input, for the layers bias correction handles."""
    means = {}
    for use in bias_uses:
        mean = channel_means.get(use.activation)
        if mean is not None and bias_correction.corrects(use.node, use.weight_index):
            means[(id(use.node), use.weight_index)] = mean
    return means


def _record_shift(shifts: dict, use, weight: np.ndarray, rounded: np.ndarray, mean: np.ndarray) -> None:
    shift = bias_correction.output_shift(use.node, weight, rounded, mean)
    if shift is not None:
        shifts[(id(use.node), use.input_index)] = shift


def _bias_safe_weight_scales(bias_uses, activations) -> dict[tuple[int, int], np.ndarray]:
    """Smallest weight scale per channel that keeps ``b / (s_act · s_w)`` within half the int32 range.

    Channels whose weights are (nearly) zero after BN folding get tiny scales; their bias would overflow
    int32 and be clipped, which shifts that channel's output. Raising the scale costs nothing there.
    """
    floors = {}
    for use in bias_uses:
        act = activations.get(use.activation)
        bias = use.node.inputs[use.input_index]
        if act is None or bias is None or bias.const_value is None:
            continue
        b = np.abs(bias.const_value.numpy().astype(np.float64)).reshape(-1)
        floor = b / (float(act.scale) * (INT32_MAX / 2))
        floors[(id(use.node), use.weight_index)] = floor.astype(np.float32)
    return floors


def _copy_type(source: ir.Value, target: ir.Value) -> None:
    if source.dtype is not None:
        target.dtype = source.dtype
    if source.shape is not None:
        target.shape = source.shape


def _remove_unused_initializers(model: ir.Model) -> None:
    graph_inputs = {v.name for v in model.graph.inputs}
    for name in list(model.graph.initializers):
        value = model.graph.initializers[name]
        if not list(value.uses()) and not value.is_graph_output() and name not in graph_inputs:
            del model.graph.initializers[name]
