"""Dynamic quantization: int8 weights stored offline, activations quantized at run time.

For each MatMul / Gemm the plan marks dynamic (constant 2-D weight), the op becomes the standard-ONNX
chain ONNX Runtime fuses into one ``DynamicQuantizeMatMul`` kernel:

    a_q, a_s, a_z = DynamicQuantizeLinear(A)          # uint8, per tensor, range from this very input
    y = Cast(MatMulInteger(a_q, W_q, a_z), float) * (a_s * s_w)     [+ bias]

``W_q`` is int8, symmetric, per output column (so no weight zero point is needed and ``s_w`` is a vector
over N); a Gemm's ``transB`` weight is stored transposed as [K, N]. Nothing is calibrated: the range of every
activation is measured by the kernel on each call, which is why dynamic quantization suits models whose
activation ranges move from input to input (transformer encoders).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxq.quant import qparams
from onnxq.quant.annotate import QuantPlan
from onnxq.quant.insert_qdq import _const, _Names, _remove_unused_initializers
from onnxq.quant.spec import weight_spec


def _weight_kn(node: ir.Node) -> np.ndarray | None:
    """The constant weight as [K, N] (Gemm transB undone), or None when the node is not a plain product."""
    weight = node.inputs[1].const_value.numpy()
    if node.op_type == "Gemm":
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        if attrs.get("transB", 0):
            weight = weight.T
    return weight if weight.ndim == 2 else None


def rewrite_dynamic(model: ir.Model, plan: QuantPlan) -> int:
    """Rewrite the plan's dynamic annotations in place; returns the number of nodes added."""
    names = _Names(model)
    added = 0
    spec = weight_spec("int8", 1)
    for annotation in sorted(plan.dynamic_annotations(), key=lambda a: a.name):
        node = annotation.nodes[0]
        weight = _weight_kn(node)
        if weight is None:
            continue
        q, scale, _ = qparams.quantize_weight(weight, spec, name=node.inputs[1].name)
        base = node.inputs[1].name
        w_q = _const(model, names, f"{base}_quantized", q)
        w_s = _const(model, names, f"{base}_scale", scale.astype(np.float32))
        a = node.inputs[0]
        dql = ir.node("DynamicQuantizeLinear", [a], num_outputs=3, name=names(f"{node.name}_DynamicQuantizeLinear"))
        for output, suffix in zip(dql.outputs, ("quantized", "scale", "zero_point"), strict=True):
            output.name = names(f"{a.name}_{suffix}")
        mmi = ir.node("MatMulInteger", [dql.outputs[0], w_q, dql.outputs[2]], name=names(f"{node.name}_MatMulInteger"))
        mmi.outputs[0].name = names(f"{node.name}_int32")
        cast = ir.node("Cast", [mmi.outputs[0]], attributes={"to": ir.DataType.FLOAT}, name=names(f"{node.name}_Cast"))
        cast.outputs[0].name = names(f"{node.name}_int32_float")
        scale_mul = ir.node("Mul", [dql.outputs[1], w_s], name=names(f"{node.name}_scale_Mul"))
        scale_mul.outputs[0].name = names(f"{node.name}_scale")
        out = node.outputs[0]
        new_nodes = [dql, mmi, cast, scale_mul]
        bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
        product = ir.node("Mul", [cast.outputs[0], scale_mul.outputs[0]], name=names(f"{node.name}_Mul"))
        new_nodes.append(product)
        last = product
        if bias is not None:
            product.outputs[0].name = names(f"{node.name}_product")
            last = ir.node("Add", [product.outputs[0], bias], name=names(f"{node.name}_bias_Add"))
            new_nodes.append(last)
        model.graph.insert_before(node, new_nodes)
        # The last new node takes over the original output value (name, type, consumers, graph output).
        final_name = out.name
        if out.type is not None:  # assigning dtype None would make a Tensor(None) type, which cannot be saved
            last.outputs[0].type = out.type
        last.outputs[0].shape = out.shape
        ir.convenience.replace_all_uses_with(out, last.outputs[0], replace_graph_outputs=True)
        model.graph.remove(node, safe=True)
        out.name = names(f"{final_name}_replaced")
        last.outputs[0].name = final_name
        added += len(new_nodes)
    _remove_unused_initializers(model)
    return added
