"""CLI command ``export``: lower a quantized model to a target runtime's artefact (QNN context binary)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from onnxq import model_io
from onnxq.backends.registry import resolve_target
from onnxq.cli_common import FLAGS, info, load_npz_feeds, progress_bar, stderr


def register(app: typer.Typer) -> None:
    app.command()(export)


def export(
    model: Annotated[Path, typer.Argument(help="quantized ONNX model (from `onnxq quantize --target ...`)")],
    target: Annotated[str, typer.Option("--target", help="qnn:<soc> (see `onnxq targets`)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
    allow_cpu_fallback: Annotated[
        bool, typer.Option("--allow-cpu-fallback", help="let nodes the accelerator refuses run on the CPU")
    ] = False,
    data: Annotated[Optional[Path], typer.Option("--data", help=".npz with one sample for the run-back check")] = None,
) -> None:
    """Compile for the target (QNN: EPContext model + context binary + AIMET encodings), run it back, report."""
    resolved = resolve_target(target)
    loaded = model_io.load_model(model)  # the same checks as every command: a readable, valid, safe model
    feeds = load_npz_feeds(data) if data else None
    with progress_bar(f"compiling for {resolved.name}"):
        report = resolved.backend.export(loaded.path, output, variant=resolved.variant,
                                         allow_cpu_fallback=allow_cpu_fallback, feeds=feeds)
    if not FLAGS.quiet:
        check = report.runback
        stderr.print(
            f"{resolved.name}: {report.placement['total_nodes'] - len(report.placement['refused'])} of "
            f"{report.placement['total_nodes']} nodes on the HTP; run back on the simulator: max difference "
            f"{check['max_diff_lsb']:.2f} 8-bit steps of the output range from the QDQ model on CPU", soft_wrap=True)
        if FLAGS.verbose:
            stderr.print(json.dumps(report.files, indent=1))
    info(f"wrote {', '.join(sorted(report.files))} and {Path(model).stem}_export.json to {output}")
