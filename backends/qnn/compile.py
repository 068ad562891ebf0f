"""Child process that compiles a QDQ model to a QNN EPContext model (``python -m onnxq.backends.qnn.compile``).

QNN numbers the contexts it creates within a process, and the number lands in the context binary: the
second compile of the same model in one process gives different bytes. Each export therefore compiles in
a fresh process, from the model's bytes (see below), so the same input always gives the same
``*_ctx.onnx`` and ``*_qnn.bin``, wherever it lies.

    python -m onnxq.backends.qnn.compile MODEL CTX_PATH SOC_MODEL {strict|lenient}
"""

from __future__ import annotations

import sys


def compile_context(model: str, ctx_path: str, soc_model: str, strict: bool) -> None:
    import onnxruntime as ort

    from onnxq.backends.qnn import runtime

    options = runtime.session_options(soc_model, strict=strict)
    # From bytes, not the path: ORT names the EPContext graph with a hash that includes the model's path,
    # so the same model compiled from two folders would give two different binaries.
    # A model with external data must be compiled from its path (its data files are found beside it).
    import onnx

    proto = onnx.load(model, load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    source = model if external else proto.SerializeToString()
    ort.ModelCompiler(options, source, embed_compiled_data_into_model=False).compile_to_file(ctx_path)


def main(argv: list[str]) -> int:
    model, ctx_path, soc_model, mode = argv
    try:
        compile_context(model, ctx_path, soc_model, mode == "strict")
    except Exception as error:  # noqa: BLE001 - report the runtime's message to the parent, one line
        print(f"ONNXQ_COMPILE_ERROR: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
