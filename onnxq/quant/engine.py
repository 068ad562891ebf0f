"""The one engine that decides *how* to quantize, whatever the target: ranges → parameters → QDQ model.

Given the FP32 model, a plan (from the target's table) and calibrated statistics:
  1. tensors linked by PASSTHROUGH/SHARED rows are grouped (union-find) and share the union of their ranges;
     the input of a clamp row (Relu/Clip) read by nothing else joins the clamp output's group without
     widening it, so its quantizer clamps;
  2. a SHARED group (Concat) whose members' ranges differ by more than ``SHARED_RANGE_RATIO`` is dissolved:
     one scale for box coordinates (0..640) and scores (0..1) would flatten the scores to a few levels;
  3. scales/zero points per group, weights quantized per channel, biases derived, Q/DQ inserted;
  4. on full-offload targets, an op whose inputs and outputs ended up at different widths (a 16-bit layer
     next to 8-bit ones) reads converted copies of the odd inputs, at its output width;
  5. where the table declares a fusion barrier (a runtime fuses Conv + SiLU into a kernel that is wrong at
     16 bits), the unit's Mul reads a converted copy of its input, range one step wider, which the runtime
     cannot fold away: the unit then runs as the separate kernels verified one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxq.backends.capability import RowKind, fixed_range
from onnxq.quant import qparams
from onnxq.quant.annotate import PATTERN_KEY, Decision, QuantPlan
from onnxq.quant.insert_qdq import Conversion, TensorQParams, insert_qdq
from onnxq.quant.spec import QuantSpec

logger = logging.getLogger(__name__)

#: Largest ratio of members' max-abs ranges that may still share one scale.
SHARED_RANGE_RATIO = 10.0


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # deterministic root


def tensor_range(stats, name: str, spec, method: str, percentile: float) -> tuple[float, float]:
    tensor = stats[name]
    seen_lo, seen_hi = tensor.min, tensor.max
    if getattr(tensor, "nonfinite", 0) and seen_lo is not None and np.ndim(seen_lo) == 0 and \
            float(seen_hi) - float(seen_lo) <= 1e-12 * max(1.0, abs(float(seen_hi))):
        # Nothing but one value and sentinels (a mask bias: 0 where attended, -3.4e38 elsewhere): keep the
        # sentinel as a large finite step so masking survives; where real data spans a range, sentinels just
        # clamp to its ends (a masked score to the lowest real score).
        return min(float(seen_lo), -qparams.SENTINEL_LIMIT), float(seen_hi)
    rmin, rmax = tensor.range(method, qdtype=spec.dtype, symmetric=spec.symmetric, percentile=percentile)
    return float(np.min(rmin)), float(np.max(rmax))


def mismatched_shared_nodes(plan: QuantPlan, stats: Mapping, method: str, percentile: float) -> list[Decision]:
    """SHARED annotations whose members' ranges are too different for one scale."""
    specs = plan.activation_specs()
    decisions = []
    for annotation in plan.annotations:
        if annotation.row.kind is not RowKind.SHARED:
            continue
        names = [v.name for v in annotation.nodes[0].inputs if v is not None and v.name in specs and v.name in stats]
        amax = [max(abs(x) for x in tensor_range(stats, n, specs[n], method, percentile)) for n in names]
        amax = [a for a in amax if a > 0]
        if len(amax) > 1 and max(amax) / min(amax) > SHARED_RANGE_RATIO:
            ratio = max(amax) / min(amax)
            decisions.append(Decision(
                annotation.nodes[0].name, annotation.nodes[0].op_type,
                f"inputs' ranges differ {ratio:.0f}x (e.g. box coordinates with scores): one shared 8-bit scale "
                "would flatten the small ones",
            ))
    return decisions


def activation_qparams(
    plan: QuantPlan, stats: Mapping, *, method: str, percentile: float
) -> dict[str, TensorQParams]:
    specs = plan.activation_specs()
    groups = _UnionFind()
    for name in specs:
        groups.find(name)
    links = [(kind, [n for n in names if n in specs]) for kind, names in plan.shared_links()]
    for kind, members in links:
        if kind is RowKind.PASSTHROUGH:
            _union_all(groups, members)
    clamped = set()  # inputs of clamps: their group's range is the clamp output's, not theirs
    for source, clamp_output in plan.clamp_links():
        if source in specs and clamp_output in specs:
            groups.union(source, clamp_output)
            clamped.add(source)
    # A Concat's inputs and output share one scale, except an input whose range a kernel fixes (a YOLO
    # head's class-score Sigmoid on QNN, [0, 1], next to box coordinates 0..640): it keeps its fixed range
    # and the Concat reads a converted copy (shared_input_conversions), rather than clip the boxes to 1.
    fixed_roots = {groups.find(name) for name in plan.fixed_outputs() if name in specs}
    for kind, members in links:
        if kind is RowKind.SHARED:
            _union_all(groups, [n for n in members if groups.find(n) not in fixed_roots])
    ranges: dict[str, tuple[float, float]] = {}
    # Members of a group share the widest spec (a 16-bit member makes the whole group 16-bit).
    group_specs: dict[str, QuantSpec] = {}
    for name, spec in specs.items():
        root = groups.find(name)
        if root not in group_specs or spec.dtype.bits > group_specs[root].dtype.bits:
            group_specs[root] = spec
        if name in clamped:
            continue
        if name not in stats:
            logger.warning("no calibration statistics for '%s'; it stays float", name)
            continue
        lo, hi = tensor_range(stats, name, spec, method, percentile)
        old = ranges.get(root)
        ranges[root] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    # A kernel-imposed range (Sigmoid's [0, 1] on QNN) wins over calibration for its whole group.
    for name, kind in plan.fixed_outputs().items():
        if name in specs:
            root = groups.find(name)
            ranges[root] = fixed_range(kind, group_specs[root].dtype.bits)
    result = {}
    for name in specs:
        root = groups.find(name)
        if root not in ranges:
            continue
        scale, zero = qparams.qparams_from_range(*ranges[root], group_specs[root], name=name)
        result[name] = TensorQParams(scale, zero, group_specs[root])
    return result


def _union_all(groups: _UnionFind, names: list[str]) -> None:
    for other in names[1:]:
        groups.union(names[0], other)


def shared_input_conversions(plan: QuantPlan, params: Mapping[str, TensorQParams]) -> list[Conversion]:
    """A shared op (Concat) reads an input whose parameters differ from its output's (a fixed-range input,
    see ``activation_qparams``) through a converted copy at the output's parameters."""
    conversions = []
    for annotation in plan.static_annotations():
        if annotation.row.kind is not RowKind.SHARED:
            continue
        outputs = [params[v.name] for v in plan.outputs_of(annotation) if v.name in params]
        if not outputs:
            continue
        anchor = annotation.nodes[0]
        for index, value in enumerate(anchor.inputs):
            current = params.get(value.name) if value is not None else None
            if current is not None and (not np.array_equal(current.scale, outputs[0].scale)
                                        or not np.array_equal(current.zero_point, outputs[0].zero_point)):
                conversions.append(Conversion(value.name, anchor, index, outputs[0]))
    return conversions


def width_conversions(plan: QuantPlan, params: Mapping[str, TensorQParams]) -> list[Conversion]:
    """Full offload: an op reads every activation at its own output width (the HTP has no Conv with uint16
    inputs and uint8 outputs). Where a tensor's width differs, the op reads a converted copy
    (DQ → Q → DQ at the op's width, same range), which the runtime runs as one Convert."""
    if not plan.table.full_offload:
        return []
    conversions = []
    for annotation in plan.annotations:
        if annotation.row.kind in (RowKind.PASSTHROUGH, RowKind.SHARED):
            continue  # one group, one width
        outputs = [params[v.name] for v in plan.outputs_of(annotation) if v.name in params]
        if not outputs:
            continue
        widest = max(outputs, key=lambda p: p.spec.dtype.bits)
        anchor = annotation.nodes[0]
        for index, value in enumerate(anchor.inputs):
            current = params.get(value.name) if value is not None else None
            if current is None or current.spec.dtype.bits == widest.spec.dtype.bits:
                continue
            low, high = qparams.range_of(current.scale, current.zero_point, current.spec)
            scale, zero = qparams.qparams_from_range(low, high, widest.spec, name=value.name)
            conversions.append(Conversion(value.name, anchor, index, TensorQParams(scale, zero, widest.spec)))
    return conversions


def barrier_conversions(plan: QuantPlan, params: Mapping[str, TensorQParams],
                        existing: list[Conversion]) -> list[Conversion]:
    """The table's fusion barriers: the gated op of a tagged unit (the Mul of ``x·Sigmoid(x)``) reads ``x``
    through a copy whose range is one step wider, when ``x`` comes from a barrier producer at a barrier
    width and the op does not read a converted copy already. One step changes the scale by 1/qmax of itself
    (1.5e-5 at 16 bits): no accuracy cost, but a Convert between producer and unit the runtime must keep."""
    converted = {(id(c.node), c.index) for c in existing}
    conversions = []
    for barrier in plan.table.fusion_barriers:
        for annotation in plan.static_annotations():
            node = annotation.nodes[0]
            if node.metadata_props.get(PATTERN_KEY) != barrier.unit:
                continue
            for index, value in enumerate(node.inputs):
                current = params.get(value.name) if value is not None else None
                if (current is None or (id(node), index) in converted
                        or not _gated_by_unit(value, node, barrier.unit)
                        or value.producer().op_type not in barrier.producers
                        or current.spec.dtype.bits not in barrier.bits):
                    continue
                low, high = qparams.range_of(current.scale, current.zero_point, current.spec)
                step = float(np.asarray(current.scale).reshape(()))
                scale, zero = qparams.qparams_from_range(low, high + step, current.spec, name=value.name)
                converted_params = TensorQParams(scale, zero, current.spec)
                conversions.append(Conversion(value.name, node, index, converted_params))
    return conversions


def _gated_by_unit(value: ir.Value, node: ir.Node, unit: str) -> bool:
    """``value`` has a producer and feeds a gate of ``unit`` (SiLU's Sigmoid) whose output ``node`` reads."""
    if value.producer() is None:
        return False
    gates = {id(v.producer()) for v in node.inputs
             if v is not None and v is not value and v.producer() is not None}
    return any(id(use.node) in gates and use.node.metadata_props.get(PATTERN_KEY) == unit
               for use in value.uses())


def float_readers(model: ir.Model, plan: QuantPlan, params: Mapping[str, TensorQParams]) -> list[tuple[ir.Node, int]]:
    """Float layers with a float weight that read a quantized activation, of the op types whose weights the
    target's runtime would quantize per tensor behind our back (``requantizes_float_weights``)."""
    ops = plan.table.requantizes_float_weights
    if not ops:
        return []
    annotated = {id(node) for annotation in plan.annotations for node in annotation.nodes}
    readers = []
    for node in model.graph:
        if node.op_type not in ops or id(node) in annotated or len(node.inputs) < 2:
            continue
        data, weight = node.inputs[0], node.inputs[1]
        if data is not None and data.name in params and weight is not None and weight.const_value is not None:
            readers.append((node, 0))
    return readers


def build_qdq_model(model: ir.Model, plan: QuantPlan, stats: Mapping, *, method: str, percentile: float,
                    bias_correction: bool = True) -> int:
    """Insert Q/DQ into ``model`` (the one ``plan`` was annotated on). Returns the Q/DQ node count.

    With ``bias_correction``, layers whose input's per-channel mean was calibrated
    (``TensorStats.channel_mean``) get the mean shift of their rounded weights taken out of their bias.
    """
    params = activation_qparams(plan, stats, method=method, percentile=percentile)
    conversions = width_conversions(plan, params) + shared_input_conversions(plan, params)
    conversions += barrier_conversions(plan, params, conversions)
    means = {name: s.channel_mean for name, s in stats.items()
             if s.channel_mean is not None} if bias_correction else {}
    added = insert_qdq(model, plan, params, conversions, float_readers(model, plan, params), means)
    if plan.dynamic_annotations():
        from onnxq.quant.dynamic import rewrite_dynamic

        added += rewrite_dynamic(model, plan)
    return added
