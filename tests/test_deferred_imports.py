"""sympy stays out of memory until a symbolic dimension expression needs it (``onnxq.deferred_imports``)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import onnxq, onnxq.cli, onnxq.cli_quant, onnxq.quant.quantize, onnxq.pipeline
import onnx_ir as ir
onnxq.pipeline.parse_pipeline("default")
print("after import", "sympy.core" in sys.modules, "mpmath" in sys.modules)
print("named dim", str(ir.SymbolicDim("batch")), "sympy.core" in sys.modules)
expression = ir.SymbolicDim("N+1") + 1
print("expression", str(expression), "sympy.core" in sys.modules)
import sympy
print("sympy", sympy.Max(2, 3), isinstance(expression._expr, sympy.Expr))
"""


def _run(code: str) -> str:
    """``code``'s stdout in a fresh interpreter (what is imported is the point)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120)
    return done.stdout


def _lines() -> list[str]:
    return _run(PROBE).splitlines()


def test_sympy_loads_only_when_an_expression_is_evaluated():
    assert _lines() == [
        "after import False False",
        "named dim batch False",
        "expression N + 2 True",
        "sympy 3 True",
    ]


def test_nothing_is_deferred_once_onnx_ir_is_imported():
    code = ("import sys, onnx_ir; from onnxq.deferred_imports import defer_symbolic_shapes; "
            "print(defer_symbolic_shapes(), type(sys.modules['sympy']).__name__)")
    assert _run(code).split() == ["False", "module"]
