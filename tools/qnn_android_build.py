"""Edge build for Android (Snapdragon HTP): ONNX model + calibration data → QNN context binary + report.

One command for a build script or CI job:

    python tools/qnn_android_build.py model.onnx --calib calib.npz --soc sm8550 -o build/
        [--max-error 0.1] [--precision a8w8|a16w8] [--input-shape x=1x3x224x224] [--allow-cpu-fallback]

writes into ``build/``:

* ``<stem>.qdq.onnx``            the quantized model (static shapes, every node on the HTP, verified on the
                                 HTP simulator against FP32 on held-back calibration samples);
* ``<stem>.qdq_ctx.onnx`` + ``<stem>.qdq_ctx_qnn.bin``  the EPContext model and the context binary for the
                                 SoC (same input, same bytes), ready for onnxruntime-qnn on the phone;
* ``<stem>.qdq.encodings.json``  AIMET 1.0.0 encodings for Qualcomm's own converter;
* ``<stem>.qdq_export.json``, ``<stem>.quant.json``  export and quantization reports;
* ``<stem>.build.md``            a short human-readable report.

On the device: create an ORT session on ``*_ctx.onnx`` with the QNN EP (``backend_type=htp``); the binary
is loaded from beside it and nothing is compiled on the phone. Exit codes as the onnxq CLI: 2 for bad
input (one line naming the problem), 1 for a failed accuracy budget or check; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(args: argparse.Namespace) -> int:
    from onnxq import api, model_io
    from onnxq.backends.registry import resolve_target
    from onnxq.cli_common import load_npz_feeds, parse_input_shapes
    from onnxq.errors import OutputPathError, VerificationError

    target = resolve_target(f"qnn:{args.soc}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"output '{out}' is a file; the build writes a folder")
    out.mkdir(parents=True, exist_ok=True)
    loaded = model_io.load_model(args.model)
    model = loaded.model
    shapes = parse_input_shapes(args.input_shape)
    if shapes:
        model, _ = api.optimize(model, "fix-input-shapes,infer-shapes", input_shapes=shapes)
    options = {k: v for k, v in (("max_error", args.max_error), ("precision", args.precision)) if v is not None}
    quantized, report = api.quantize(model, args.calib, target=target.name,
                                     progress=lambda line: print(f"  {line}", file=sys.stderr), **options)
    stem = Path(args.model).stem
    qdq = out / f"{stem}.qdq.onnx"
    model_io.save_model(quantized, qdq, protected=[loaded.path, *loaded.data_files])
    model_io.write_text_atomic(out / f"{stem}.quant.json", report.to_json())
    feeds = load_npz_feeds(Path(args.sample)) if args.sample else None
    exported = target.backend.export(qdq, out, variant=target.variant,
                                     allow_cpu_fallback=args.allow_cpu_fallback, feeds=feeds)
    model_io.write_text_atomic(out / f"{stem}.build.md", render(stem, target.name, report, exported))
    print(f"{target.name}: {len(report.layers)} ops quantized, error {report.error:.4f} (budget "
          f"{report.max_error:g}) on the HTP simulator, {report.placement['on_target']}/"
          f"{report.placement['total_nodes']} nodes on the HTP; wrote {out}", file=sys.stderr)
    if not report.budget_met:
        raise VerificationError(f"the accuracy budget {report.max_error:g} is not met (error {report.error:.4g}); "
                                f"the build is in {out}, see {stem}.quant.json")
    return 0


def render(stem: str, target: str, report, exported) -> str:
    moved = "".join(f"| {name} | {dest} |\n" for name, dest in sorted(report.higher_precision.items()))
    files = "".join(f"| {name} | {info['bytes']:,} | `{info['sha256'][:16]}` |\n"
                    for name, info in sorted(exported.files.items()))
    return (
        f"# {stem} for {target} (HTP {exported.htp_arch}, soc_model {exported.soc_model})\n\n"
        f"- precision {report.precision}, calibration {report.method} on {report.calibration_samples} samples\n"
        f"- worst output error on {report.holdout_samples} held-back samples, HTP simulator: "
        f"{report.error:.4f} (budget {report.max_error:g}) — {'met' if report.budget_met else 'NOT met'}\n"
        f"- nodes on the HTP: {report.placement['on_target']} of {report.placement['total_nodes']}"
        f"{'' if report.placement['full_offload'] else ' (CPU fallback: ' + ', '.join(report.placement['refused']) + ')'}\n"
        f"- compiled context run back on the simulator: {exported.runback['max_diff_lsb']:.2f} quantization "
        f"steps from the QDQ model on CPU\n"
        f"- onnxruntime {exported.versions.get('onnxruntime')}, onnxruntime-qnn "
        f"{exported.versions.get('onnxruntime_qnn')}, encodings format {exported.encodings_version}\n\n"
        + (f"## Layers moved to 16-bit by the accuracy search\n\n| node | precision |\n|---|---|\n{moved}\n"
           if moved else "")
        + f"## Files\n\n| file | bytes | sha256 |\n|---|---|---|\n{files}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qnn_android_build", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--calib", required=True, help=".npz (one array per input) or a folder of .npz")
    parser.add_argument("--soc", default="sm8550", help="SoC name, soc_model id or HTP arch (default %(default)s)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--max-error", type=float)
    parser.add_argument("--precision")
    parser.add_argument("--input-shape", action="append", help="NAME=1x3x224x224")
    parser.add_argument("--sample", help=".npz with one input sample for the run-back check")
    parser.add_argument("--allow-cpu-fallback", action="store_true")
    parser.add_argument("--debug", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    args = parse_args(argv)
    from onnxq.errors import OnnxqError

    try:
        return build(args)
    except OnnxqError as error:
        if args.debug:
            raise
        print(f"qnn_android_build: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
