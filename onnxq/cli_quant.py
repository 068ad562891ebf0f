"""CLI commands of quantization: ``quantize``, ``compare``, ``targets``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from onnxq import heap, model_io, numerics
from onnxq.errors import OutputPathError, VerificationError
from onnxq.backends.registry import all_targets, resolve_target
from onnxq.cli_common import FLAGS, info, parse_input_shapes, progress_bar, stderr, stdout
from onnxq.compare import compare_models
from onnxq.quant.recipe import METHODS, Recipe
from onnxq.session_files import SessionFiles


def register(app: typer.Typer) -> None:
    app.command()(quantize)
    app.command()(compare)
    app.command()(targets)


#: A measured speed-up under this is reported as slower than FP32 (timing noise stays above it).
SLOWER_THAN_FP32 = 0.95


def quantize(
    model: Annotated[Path, typer.Argument(help="input ONNX model (FP32)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output ONNX file")],
    calib: Annotated[Path, typer.Option("--calib", help=".npz (one array per input) or a folder of .npz")],
    target: Annotated[str, typer.Option("--target", help="ort | ort:arm64 (see `onnxq targets`)")] = "ort",
    precision: Annotated[Optional[str], typer.Option("--precision", help="a8w8 | a16w8 | dynamic (ort) | a16w4 ... (qnn); see `onnxq targets T`")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="|".join(METHODS))] = None,
    percentile: Annotated[Optional[float], typer.Option("--percentile")] = None,
    recipe_file: Annotated[Optional[Path], typer.Option("--recipe", help="TOML recipe with overrides")] = None,
    max_error: Annotated[
        Optional[float], typer.Option("--max-error", help="budget: worst relative L2 error of any output")
    ] = None,
    calibration_size: Annotated[Optional[int], typer.Option("--calibration-size", help="use at most N samples")] = None,
    holdout: Annotated[Optional[int], typer.Option("--holdout", help="held-back samples for verification")] = None,
    no_fallback: Annotated[bool, typer.Option("--no-fallback", help="report the error, do not fall back")] = False,
    no_bias_correction: Annotated[bool, typer.Option(
        "--no-bias-correction", help="keep Conv/Gemm biases as they are (no mean-shift correction)")] = False,
    report_path: Annotated[Optional[Path], typer.Option("--report", help="write the JSON report here")] = None,
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="NAME=1x3x224x224")] = None,
) -> None:
    """Quantize for a target: calibrate, insert Q/DQ, verify on the target runtime, fall back until the budget holds."""
    from onnxq.quant.quantize import quantize as run_quantize

    inputs = [p for p in (model, calib, recipe_file) if p is not None and p.exists()]
    model_io.check_output_path(output, inputs)
    if report_path is not None:
        model_io.check_output_path(report_path, inputs)
        if report_path.resolve() == output.resolve():
            raise OutputPathError(f"--report '{report_path}' is the output model's path; give the report its own file")
    resolved = resolve_target(target)
    recipe = Recipe.from_toml(recipe_file) if recipe_file else Recipe()
    recipe = recipe.with_options(
        precision=precision, method=method, percentile=percentile, max_error=max_error,
        calibration_size=calibration_size, holdout=holdout, fallback=False if no_fallback else None,
        bias_correction=False if no_bias_correction else None,
    )
    # One session folder for the whole command: the input's weights are copied there as it loads (not parsed
    # into memory), and every session, the quantizer and the final save read them from there.
    with SessionFiles() as files:
        loaded = files.load(model)
        fp32 = loaded.model
        shapes = parse_input_shapes(input_shape)
        if shapes:
            from onnxq import api

            fp32, _ = api.optimize(fp32, "fix-input-shapes,infer-shapes", input_shapes=shapes)
        timed_fp32 = optimized_fp32 = None
        if not resolved.backend.simulated:
            # The FP32 model as the speed check will time it, optimized and written now, while the process
            # holds little: a session on that file maps its weights instead of copying them while it
            # optimizes (``Backend.optimize_for_timing``), and the check comes at the run's fullest.
            timed_fp32 = files.write_model(fp32)
            optimized_fp32 = resolved.backend.optimize_for_timing(
                timed_fp32, str(files.new_path("fp32-timing", ".onnx")), variant=resolved.variant)
            heap.release(collect=False)
        with progress_bar("quantizing") as update:
            quantized, report = run_quantize(
                fp32, calib, target=resolved, recipe=recipe, progress=lambda message: update(0, 0, message),
                session_files=files,
            )
        heap.release()  # what quantizing freed, before writing and validating
        # The input's layout decides the output's (its weights now live in the session folder).
        external = bool(loaded.data_files) or (
            model_io.weights_nbytes(quantized) > model_io.EXTERNAL_DATA_THRESHOLD)
        with progress_bar("validating and writing"):
            model_io.save_model(quantized, output, protected=[loaded.path, *loaded.data_files],
                                external_data=external, scratch=files)
        # Speed on the target against the FP32 input, on one calibration sample.
        sample = next(iter(report_samples(calib, fp32, recipe)), None)
        if sample is not None and timed_fp32 is not None:
            # Both through files whose weights ORT maps (not bytes it copies thrice). The models go before the
            # sessions come, and the sessions come one at a time (``time_models``).
            paths = [optimized_fp32 or timed_fp32, files.write_model(quantized)]
            del fp32, quantized, loaded
            heap.release()
            t_fp32, t_q = resolved.backend.time_models(paths, sample, variant=resolved.variant, rounds=20,
                                                       optimized=[optimized_fp32] if optimized_fp32 else [])
            report.speedup = t_fp32 / t_q if t_q > 0 else None
    if report_path:
        model_io.write_text_atomic(report_path, report.to_json())
    if not FLAGS.quiet:
        _print_report(report)
    info(f"wrote {output}")
    if report.holdout_samples and not report.budget_met:
        # Written for inspection, but a pipeline must not ship it as if it did its job.
        raise VerificationError(
            f"accuracy budget {report.max_error:g} not met on {report.target} (worst output error "
            f"{report.error:.4g}); {output} was written for inspection; see --report, raise --max-error or "
            f"choose a higher --precision")


def report_samples(calib, model, recipe: Recipe):
    from onnxq.calibration import CalibrationData

    data = CalibrationData.from_source(calib, model, limit=1, holdout=0)
    return iter(data)


def _print_report(report) -> None:
    verdict = "[green]within budget[/]" if report.budget_met else "[red]over budget[/]"
    stderr.print(
        f"target {report.target}, {report.precision}, {report.method}: worst output error {report.error:.4f} "
        f"(budget {report.max_error:g}) {verdict}; {len(report.layers)} layers quantized, "
        f"{len(report.kept_float)} kept float, {len(report.rounds)} verification rounds",
        soft_wrap=True,
    )
    if report.speedup:
        note = ""
        if report.speedup < SLOWER_THAN_FP32:
            note = (" — slower than FP32: its int8 kernels do not repay the Quantize/DequantizeLinear around them "
                    "(a model this small, or too few layers quantized); FP32 may be the better choice here")
        stderr.print(f"measured speed-up over FP32 on this machine, one thread: {report.speedup:.2f}x{note}",
                     soft_wrap=True)
    if report.kept_float and FLAGS.verbose:
        table = Table("node", "kept float because")
        for node, reason in sorted(report.kept_float.items()):
            table.add_row(node, reason)
        stderr.print(table)


def compare(
    model_a: Annotated[Path, typer.Argument(help="reference model (e.g. FP32)")],
    model_b: Annotated[Path, typer.Argument(help="model to compare (e.g. quantized)")],
    data: Annotated[Path, typer.Option("--data", help=".npz or folder of .npz with inputs")],
    target: Annotated[str, typer.Option("--target")] = "ort",
    samples: Annotated[int, typer.Option("--samples", help="at most this many samples")] = 64,
    json_output: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Per-output error, top-1 agreement for classifier-like outputs, and latency ratio of B against A."""
    from onnxq.calibration import CalibrationData

    resolved = resolve_target(target)
    a, b = model_io.load_model(model_a), model_io.load_model(model_b)
    feeds = list(CalibrationData.from_source(data, a.model, limit=samples, holdout=0))
    result = compare_models(numerics.model_bytes(a.model), numerics.model_bytes(b.model), feeds, resolved)
    if json_output:
        import json
        from dataclasses import asdict

        print(json.dumps({**asdict(result), "speedup": result.speedup}, indent=2, sort_keys=True))
        return
    table = Table("output", "rel. L2 error", "SQNR dB", "top-1 agreement")
    for out in result.outputs:
        top1 = "" if out.top1_agreement is None else f"{100 * out.top1_agreement:.1f}%"
        table.add_row(out.name, f"{out.relative_l2:.4g}", f"{out.sqnr_db:.1f}", top1)
    stdout.print(table)
    if result.speedup:
        stdout.print(f"latency, one thread: A {result.latency_a_ms:.2f} ms, B {result.latency_b_ms:.2f} ms: "
                     f"B is {result.speedup:.2f}x as fast ({result.samples} samples)")


def targets(
    target: Annotated[Optional[str], typer.Argument(help="a target to describe in full")] = None,
) -> None:
    """List targets, or print one target's capability table in words."""
    if target:
        stdout.print(resolve_target(target).table().describe(), highlight=False, soft_wrap=True)
        return
    for t in all_targets():
        stdout.print(f"{t.name:<14} {t.backend.variants[t.variant]}", soft_wrap=True)
