"""Annotation: walk the graph with a target's capability table and decide what gets quantized how.

Two sweeps in topological order:
  1. COMPUTE rows (Conv, Gemm, MatMul, ... with fused activations) claim their op chains.
  2. ELEMENTWISE / PASSTHROUGH / SHARED rows claim an op only when one of its inputs is already quantized,
     so no Q/DQ pair is added where it would only add conversions.
A row whose check refuses a node records the reason; the plan keeps every decision for the report.

The result, a ``QuantPlan``, is backend-free data: which activation tensors get which spec (with groups of
tensors that must share a scale), which weights are quantized on which axis, which biases are derived.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from onnxq.backends.capability import CapabilityTable, Match, PatternRow, RowKind
from onnxq.quant.spec import QuantSpec, weight_spec

logger = logging.getLogger(__name__)

FLOAT = "float"
_NEXT_ROW = "<next row>"
#: node metadata set by fuse-activations on ops that form one unit (e.g. "silu"); never split by Q/DQ
PATTERN_KEY = "onnxq.pattern"


@dataclass
class Annotation:
    row: PatternRow
    nodes: tuple[ir.Node, ...]
    precision: str

    @property
    def name(self) -> str:
        return self.nodes[0].name or ""

    @property
    def output(self) -> ir.Value:
        return self.nodes[-1].outputs[0]


@dataclass(frozen=True)
class Decision:
    """Why a node is not quantized (refused by the table, excluded by the recipe or by fall-back)."""

    node: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class WeightUse:
    node: ir.Node
    input_index: int
    spec: QuantSpec


@dataclass(frozen=True)
class BiasUse:
    node: ir.Node
    input_index: int
    activation: str
    weight_index: int


@dataclass
class QuantPlan:
    table: CapabilityTable
    variant: str = ""  # the target variant the table's checks were run with
    annotations: list[Annotation] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def by_node(self) -> dict[str, Annotation]:
        return {node.name: a for a in self.annotations for node in a.nodes}

    # -- what the engine needs -------------------------------------------------------------------------
    def activation_specs(self) -> dict[str, QuantSpec]:
        """Activation tensor name -> spec; where two annotations disagree the higher precision wins."""
        specs: dict[str, QuantSpec] = {}
        for annotation in self.static_annotations():
            precision = self.table.precisions[annotation.precision]
            for value in _activation_inputs(annotation) + self.outputs_of(annotation):
                current = specs.get(value.name)
                if current is None or precision.activation.dtype.bits > current.dtype.bits:
                    specs[value.name] = precision.activation
        return specs

    def shared_links(self) -> list[tuple[RowKind, tuple[str, ...]]]:
        """Groups of tensor names that must share one scale (PASSTHROUGH and SHARED rows), with the kind."""
        links = []
        for annotation in self.static_annotations():
            if annotation.row.kind in (RowKind.PASSTHROUGH, RowKind.SHARED):
                names = [v.name for v in _activation_inputs(annotation) + self.outputs_of(annotation)]
                if len(names) > 1:
                    links.append((annotation.row.kind, tuple(names)))
        return links

    def static_annotations(self) -> list[Annotation]:
        return [a for a in self.annotations if not self.table.precisions[a.precision].dynamic]

    def dynamic_annotations(self) -> list[Annotation]:
        return [a for a in self.annotations if self.table.precisions[a.precision].dynamic]

    def outputs_of(self, annotation: Annotation) -> list[ir.Value]:
        """Outputs the annotation quantizes: graph outputs too when the target runs only quantized ops."""
        return _quantized_outputs(annotation, graph_outputs=self.table.full_offload)

    def clamp_links(self) -> list[tuple[str, str]]:
        """(input, output) of clamp annotations whose input is read by nothing else: one scale, the
        output's range (see ``PatternRow.clamp``)."""
        links = []
        for annotation in self.static_annotations():
            if not annotation.row.clamp or len(annotation.nodes) != 1:
                continue
            inputs = _activation_inputs(annotation)
            outputs = self.outputs_of(annotation)
            if len(inputs) == 1 and len(outputs) == 1 and len(list(inputs[0].uses())) == 1 \
                    and not inputs[0].is_graph_output():
                links.append((inputs[0].name, outputs[0].name))
        return links

    def fixed_outputs(self) -> dict[str, str]:
        """Tensor name -> fixed range kind ("unit", "signed_unit") the target's kernel requires."""
        return {
            value.name: annotation.row.fixed_output
            for annotation in self.static_annotations() if annotation.row.fixed_output
            for value in self.outputs_of(annotation)
        }

    def static_inputs(self) -> list[WeightUse]:
        """Full offload: constant float data inputs that are not weights or biases (an Add's constant,
        LayerNorm's gamma/beta, a Gather table) are quantized per tensor with the activation spec."""
        if not self.table.full_offload:
            return []
        uses = []
        for annotation in self.static_annotations():
            row, anchor = annotation.row, annotation.nodes[0]
            owned = set(_weight_indices(annotation)) | ({row.bias_input} if self._has_bias(annotation) else set())
            spec = self.table.precisions[annotation.precision].activation
            for index, value in enumerate(anchor.inputs):
                if (index in owned or not row.is_data_input(index) or not _is_constant(value)
                        or not _is_float(value)):
                    continue
                if row.kind is RowKind.PASSTHROUGH and index > 0:
                    continue
                uses.append(WeightUse(anchor, index, spec))
        return uses

    def weights(self) -> list[WeightUse]:
        uses = []
        for annotation in self.static_annotations():
            if annotation.row.kind is not RowKind.COMPUTE:
                continue
            anchor = annotation.nodes[0]
            for index in _weight_indices(annotation):
                uses.append(WeightUse(anchor, index, self._weight_spec(annotation, index)))
        return uses

    def _weight_spec(self, annotation: Annotation, index: int) -> QuantSpec:
        """Per channel on the row's weight axis, or per block along its block axis where the row takes the
        precision's per-block weights and the input channels divide into two blocks or more (one block is
        per-channel quantization with extra steps; see PatternRow)."""
        precision = self.table.precisions[annotation.precision]
        row, anchor = annotation.row, annotation.nodes[0]
        shape = anchor.inputs[index].const_value.shape
        axis = None
        if precision.weight_per_channel and row.weight_axis is not None:
            axis = row.weight_axis(anchor, index)
            if axis is not None:
                axis %= len(shape)
        block_axis = row.block_axis(anchor, index) if row.block_axis is not None else None
        if (axis is None or block_axis is None or not precision.weight_block_size
                or annotation.precision not in row.block_precisions):
            return weight_spec(precision.weight_dtype, axis, max_level=precision.weight_max_level)
        block_axis %= len(shape)
        block, bits = precision.weight_block_size, precision.weight_block_scale_bits
        smallest = precision.weight_min_block_size or block
        while block >= smallest and block_axis != axis:
            if shape[block_axis] % block == 0 and shape[block_axis] >= 2 * block:
                return weight_spec(precision.weight_dtype, block_axis, block_size=block, channel_axis=axis,
                                   block_scale_bits=bits,
                                   int_block_scales=row.int_block_scales and bool(bits),
                                   max_level=precision.weight_max_level)
            block //= 2
        return weight_spec(precision.weight_dtype, axis, max_level=precision.weight_max_level)

    @staticmethod
    def _has_bias(annotation: Annotation) -> bool:
        row, anchor = annotation.row, annotation.nodes[0]
        if not (row.kind is RowKind.COMPUTE and row.bias_input is not None and len(anchor.inputs) > row.bias_input
                and _is_constant(anchor.inputs[row.bias_input]) and bool(_weight_indices(annotation))
                and len(_activation_inputs(annotation)) == 1):
            return False
        # An int32 bias is one value per output channel; Gemm's C may also be a scalar or an [M, N] matrix,
        # which stay float (they do not fuse into the integer kernel as s_act·s_w-scaled values).
        shape = anchor.inputs[row.bias_input].const_value.shape
        return len(shape) == 1 and shape[0] > 1

    def biases(self) -> list[BiasUse]:
        uses = []
        for annotation in self.static_annotations():
            if self._has_bias(annotation):
                row, anchor = annotation.row, annotation.nodes[0]
                uses.append(BiasUse(anchor, row.bias_input, _activation_inputs(annotation)[0].name,
                                    _weight_indices(annotation)[0]))
        return uses


def _drop_dead_ends(plan: QuantPlan) -> None:
    """CPU targets: a neighbour op (elementwise, data movement) whose outputs no quantized op reads would
    only add a Q/DQ pair before a float consumer: it runs float instead. A detector's score Sigmoid before
    the float Concat of its head keeps its float scores; the quantized Conv before it still runs int8.
    Likewise a compute op the table runs faster in float when alone (``CapabilityTable.float_when_alone``:
    ORT's depthwise Conv between two float HardSwish ops) when no quantized op feeds it or reads it."""
    while True:
        inside = {id(node) for annotation in plan.static_annotations() for node in annotation.nodes}
        produced = {v.name for a in plan.static_annotations() for v in plan.outputs_of(a)}

        def reads_quantized(annotation: Annotation) -> bool:
            return any(id(use.node) in inside for out in annotation.nodes[-1].outputs for use in out.uses())

        def alone(annotation: Annotation) -> bool:
            return (plan.table.float_when_alone is not None and plan.table.float_when_alone(annotation.nodes[0])
                    and not any(v.name in produced for v in _activation_inputs(annotation))
                    and not reads_quantized(annotation))

        dead = [annotation for annotation in plan.static_annotations()
                if (annotation.row.kind is not RowKind.COMPUTE and not reads_quantized(annotation))
                or (annotation.row.kind is RowKind.COMPUTE and alone(annotation))]
        if not dead:
            return
        for annotation in dead:
            if annotation.row.kind is RowKind.COMPUTE:
                node = annotation.nodes[0]
                plan.decisions.append(Decision(node.name, node.op_type, "alone between float ops: its int8 "
                                               "kernel would not repay the Quantize/Dequantize around it"))
        plan.annotations = [a for a in plan.annotations if all(a is not d for d in dead)]


def _is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def _weight_indices(annotation: Annotation) -> list[int]:
    anchor = annotation.nodes[0]
    return [
        i for i in annotation.row.weight_inputs
        if i < len(anchor.inputs) and _is_constant(anchor.inputs[i])
    ]


def _activation_inputs(annotation: Annotation) -> list[ir.Value]:
    anchor, row = annotation.nodes[0], annotation.row
    skip = set(row.weight_inputs) | ({row.bias_input} if row.bias_input is not None else set())
    count = 1 if row.kind is RowKind.PASSTHROUGH else len(anchor.inputs)
    return [
        v for i, v in enumerate(anchor.inputs[:count])
        if v is not None and i not in skip and row.is_data_input(i) and not _is_constant(v) and _is_float(v)
    ]


def _quantized_outputs(annotation: Annotation, *, graph_outputs: bool = False) -> list[ir.Value]:
    return [v for v in annotation.nodes[-1].outputs
            if v is not None and (graph_outputs or not v.is_graph_output()) and _is_float(v)]


def _is_float(value: ir.Value) -> bool:
    return value.dtype is None or value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16)


def _match_chain(node: ir.Node, row: PatternRow, variant: str) -> Match | None:
    if node.op_type != row.ops[0] or node.domain not in ("", "ai.onnx"):
        return None
    chain = [node]
    for op in row.ops[1:]:
        out = chain[-1].outputs[0]
        users = list(out.uses())
        if out.is_graph_output() or len(users) != 1:
            return None
        nxt = users[0].node
        if nxt.op_type != op or nxt.inputs[0] is not out:
            return None
        chain.append(nxt)
    return Match(tuple(chain), variant)


@dataclass(frozen=True)
class Overrides:
    """Recipe overrides: per op type or node-name glob, a precision name or "float"."""

    rules: tuple[tuple[str, str], ...] = ()

    def precision_for(self, node: ir.Node) -> str | None:
        for pattern, precision in self.rules:
            if pattern == node.op_type or fnmatch.fnmatchcase(node.name or "", pattern):
                return precision
        return None


def annotate(
    model: ir.Model,
    table: CapabilityTable,
    *,
    variant: str = "",
    precision: str | None = None,
    overrides: Overrides = Overrides(),
    forced: dict[str, str] | None = None,
) -> QuantPlan:
    """Build a ``QuantPlan``. ``forced`` maps node names to a precision or "float" (fall-back decisions)."""
    precision = precision or table.default_precision
    forced = forced or {}
    NameFixPass()(model)  # decisions and fall-back refer to nodes by (unique) name
    plan = QuantPlan(table, variant)
    claimed: set[int] = set()
    quantized: set[str] = set()
    nodes = list(model.graph)

    def choose(node: ir.Node, row: PatternRow) -> str | None:
        wanted = forced.get(node.name) or overrides.precision_for(node) or precision
        if wanted == FLOAT:
            reason = "kept float by fall-back" if node.name in forced else "excluded by the recipe"
            plan.decisions.append(Decision(node.name, node.op_type, reason))
            return None
        if wanted not in row.precisions and table.precisions[wanted].dynamic:
            return _NEXT_ROW  # a later row may have the dynamic kernel; static neighbours never do
        if wanted not in row.precisions:
            usable = [p for p in row.precisions if p in table.precisions]
            if not usable:
                return None
            fallback = usable[0]
            logger.debug("%s: %s not supported by row %s, using %s", node.name, wanted, row.name, fallback)
            return fallback
        return wanted

    def sweep(kinds: set[RowKind]) -> None:
        for node in nodes:
            if id(node) in claimed:
                continue
            unit = node.metadata_props.get(PATTERN_KEY)
            if unit and not table.full_offload and unit not in table.quantized_units:
                continue  # part of a recognised unit (HardSwish): CPU runtimes fuse it in float
            refusal = None
            for row in table.rows_for(node.op_type):
                if row.kind not in kinds:
                    continue
                match = _match_chain(node, row, variant)
                if match is None:
                    continue
                if row.kind is not RowKind.COMPUTE and not table.full_offload and not any(
                    v is not None and v.name in quantized for v in node.inputs
                ):
                    refusal = refusal or "no quantized neighbour (Q/DQ here would only add conversions)"
                    continue
                reason = row.check(match) if row.check else None
                if reason:
                    refusal = reason
                    continue
                chosen = choose(node, row)
                if chosen is _NEXT_ROW:
                    refusal = refusal or f"no dynamic kernel for {node.op_type} on {table.target}"
                    continue
                if chosen is None:
                    refusal = None
                    break
                annotation = Annotation(row, match.nodes, chosen)
                if row.kind is RowKind.COMPUTE and not _activation_inputs(annotation):
                    refusal = "no float activation input"
                    continue
                plan.annotations.append(annotation)
                claimed.update(id(n) for n in match.nodes)
                if not table.precisions[chosen].dynamic:  # dynamic ops leave float tensors around them
                    quantized.update(v.name for v in plan.outputs_of(annotation))
                    quantized.update(v.name for v in _activation_inputs(annotation))
                refusal = None
                break
            if refusal and RowKind.COMPUTE in kinds:
                plan.decisions.append(Decision(node.name, node.op_type, refusal))

    sweep({RowKind.COMPUTE})
    sweep({RowKind.ELEMENTWISE, RowKind.PASSTHROUGH, RowKind.SHARED})
    if not table.full_offload:
        _drop_dead_ends(plan)
    for node in nodes:  # say so, rather than leave a model with its work in a branch "0 layers quantized"
        inner = [n for attr in node.attributes.values() if attr.type in (ir.AttributeType.GRAPH,
                 ir.AttributeType.GRAPHS) for g in (attr.value if isinstance(attr.value, list) else [attr.value])
                 for n in ir.traversal.RecursiveGraphIterator(g)]
        compute_ops = sum(1 for n in inner if any(r.kind is RowKind.COMPUTE for r in table.rows_for(n.op_type)))
        if compute_ops:
            plan.decisions.append(Decision(node.name, node.op_type, f"its subgraphs hold {compute_ops} compute ops "
                                                                    "that are not quantized (subgraphs stay float)"))
    return plan

