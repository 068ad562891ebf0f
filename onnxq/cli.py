"""The ``onnxq`` command line.

    onnxq optimize model.onnx -o opt.onnx [--passes default] [--verify] [--input-shape x=1x3x224x224]
    onnxq inspect model.onnx [--json]
    onnxq passes
    onnxq quantize model.onnx -o q.onnx --calib calib.npz [--target ort] (see onnxq/cli_quant.py)
    onnxq compare a.onnx b.onnx --data inputs.npz
    onnxq targets [TARGET]

Global flags anywhere on the line: ``--quiet``, ``--verbose``, ``--debug`` (full tracebacks).
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from onnxq import api, model_io
from onnxq.cli_common import (
    FLAGS,
    exit_with_error,
    extract_global_flags,
    info,
    load_npz_feeds,
    logging_configured,
    parse_input_shapes,
    progress_bar,
    stderr,
    stdout,
)
from onnxq.errors import OnnxqError
from onnxq.inspection import summarize
from onnxq.pass_api import available_passes
from onnxq.render import print_pass_list, print_pass_report, print_summary

app = typer.Typer(
    name="onnxq",
    help="ONNX graph optimizer and quantizer that verifies its output on the target runtime.\n\n"
    "Global flags (anywhere): --quiet, --verbose, --debug.",
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)


def _resolve_output(model: Path, output: Optional[Path], in_place: bool) -> Path:
    if output is None:
        if not in_place:
            raise OnnxqError("no output given: pass -o OUT, or --in-place to replace the input")
        return model
    return output


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="input ONNX model")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="output ONNX file")] = None,
    passes: Annotated[str, typer.Option("--passes", "-p", help="pipeline name or text: fold-constants,fold-bn,dce")] = "default",
    input_shape: Annotated[
        Optional[list[str]], typer.Option("--input-shape", help="fix an input's dims: NAME=1x3x224x224 (repeatable)")
    ] = None,
    verify: Annotated[bool, typer.Option("--verify", help="check numerics after every pass with ORT")] = False,
    verify_data: Annotated[
        Optional[Path], typer.Option("--verify-data", help=".npz of inputs for --verify (default: random)")
    ] = None,
    rtol: Annotated[float, typer.Option("--rtol", help="relative tolerance of --verify")] = 1e-4,
    external_data: Annotated[
        Optional[bool],
        typer.Option("--external-data/--no-external-data", help="force a fresh OUT.data file (default: if > 1.8 GB)"),
    ] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="allow replacing the input (atomically)")] = False,
) -> None:
    """Run graph passes (BN folding, fusions, constant folding, cleanup) and write a portable model."""
    output = _resolve_output(model, output, in_place)
    shapes = parse_input_shapes(input_shape)
    model_io.check_output_path(output, [model] if model.exists() else [], in_place=in_place)
    feeds = load_npz_feeds(verify_data) if verify_data else None
    loaded = model_io.load_model(model)
    with progress_bar("optimizing") as update:
        optimized, report = api.optimize(
            loaded.model, passes, input_shapes=shapes, verify=verify or feeds is not None,
            verify_feeds=feeds, rtol=rtol, progress=update,
        )
    with progress_bar("validating and writing"):
        model_io.save_model(
            optimized, output, protected=[loaded.path, *loaded.data_files],
            external_data=external_data, in_place=in_place,
        )
    if not FLAGS.quiet:
        print_pass_report(stderr, report)
    info(f"wrote {output} ({report.total_rewrites} rewrites in {report.seconds:.2f} s)")


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model")],
    json_output: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Show opsets, inputs/outputs, op histogram, parameters by dtype and quantized ops."""
    loaded = model_io.load_model(model)
    summary = summarize(loaded.model, str(model))
    if json_output:
        stdout.print_json(summary.to_json()) if stdout.is_terminal else print(summary.to_json())
    else:
        print_summary(stdout, summary)


@app.command("passes")
def list_passes() -> None:
    """List the graph passes, their options and the named pipelines."""
    print_pass_list(stdout, available_passes())


def _register_quantization_commands() -> None:
    from onnxq import cli_export, cli_quant

    cli_quant.register(app)
    cli_export.register(app)


_register_quantization_commands()


class _Terminated(Exception):
    """SIGTERM (a CI timeout, `kill`), raised so that temporary files and folders are removed on the way out."""


def _on_sigterm(signum, frame):
    raise _Terminated("terminated (SIGTERM); nothing was written")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: returns the exit code (2 for bad input, 1 for failed checks, 143 on SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return _main(argv)
    except _Terminated as exc:
        return exit_with_error(exc, 143)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    args = extract_global_flags(list(sys.argv[1:] if argv is None else argv))
    try:
        with logging_configured():
            code = app(args=args, prog_name="onnxq", standalone_mode=False)
    except OnnxqError as exc:
        if FLAGS.debug:
            traceback.print_exc()
        return exit_with_error(exc, exc.exit_code)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: one line too, pointing at --help
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        command = getattr(getattr(exc, "ctx", None), "command_path", "onnxq")
        if not message.strip():  # no arguments at all: typer has printed the help
            return 2
        return exit_with_error(OnnxqError(f"{message} (see '{command} --help')"), 2)
    except (typer.Abort, KeyboardInterrupt):
        return exit_with_error(KeyboardInterrupt("interrupted; nothing was written"), 130)
    except _Terminated:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into a clean line
        if FLAGS.debug:
            traceback.print_exc()
            return 1
        return exit_with_error(
            RuntimeError(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback"), 1
        )
    if code == 130:  # typer turns Ctrl-C into a returned 130 when not standalone
        return exit_with_error(KeyboardInterrupt("interrupted; nothing was written"), 130)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
