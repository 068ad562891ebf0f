"""Fix dynamic input dims to static values (QNN and many edge runtimes need static shapes).

Sets the given inputs' shapes, checks the new dims agree with any static dims already there, and re-runs
shape inference so downstream values (and shape-dependent rewrites) see the static shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from onnxq.errors import OptionError, UnknownNameError
from onnxq.pass_api import OnnxqPass, register_pass


@dataclass(frozen=True)
class FixInputShapesOptions:
    #: input name -> static dims; set from the CLI with ``--input-shape name=1x3x224x224``.
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@register_pass
class FixInputShapesPass(OnnxqPass):
    """Rules:

    1. Each named input gets the given static shape; its rank must match and static dims must agree.
    2. Shape inference re-runs so intermediate values become static too.
    """

    name = "fix-input-shapes"
    summary = "make dynamic input dims static (--input-shape name=1x3x224x224)"
    Options = FixInputShapesOptions

    def apply(self, model: ir.Model) -> int:
        inputs = {v.name: v for v in model.graph.inputs}
        changed = 0
        for name, dims in self.options.shapes.items():
            if name not in inputs:
                raise UnknownNameError("model input", name, inputs)
            value = inputs[name]
            dims = tuple(int(d) for d in dims)
            if any(d <= 0 for d in dims):
                raise OptionError(f"input '{name}': dims must be positive, got {dims}")
            if value.shape is not None:
                if len(value.shape) != len(dims):
                    raise OptionError(
                        f"input '{name}' has rank {len(value.shape)} ({value.shape}), the given shape {dims} has "
                        f"rank {len(dims)}"
                    )
                for axis, (old, new) in enumerate(zip(value.shape, dims, strict=True)):
                    if isinstance(old, int) and old != new:
                        raise OptionError(f"input '{name}' axis {axis} is fixed at {old}; cannot set it to {new}")
                if tuple(value.shape) == dims:
                    continue
            value.shape = ir.Shape(dims)
            changed += 1
        if changed:
            for value in model.graph:
                for out in value.outputs:
                    if not out.is_graph_output():
                        out.shape = None  # stale symbolic shapes would block static inference
            ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        return changed
