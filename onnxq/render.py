"""Human-readable tables for the CLI (rich): model summaries, pass reports, the pass list."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from onnxq.inspection import ModelSummary
from onnxq.pass_api import OnnxqPass, option_fields
from onnxq.pipeline import PIPELINES, PipelineReport


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_summary(console: Console, summary: ModelSummary) -> None:
    opsets = ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in summary.opsets.items())
    console.print(f"[bold]{summary.path or 'model'}[/]  IR {summary.ir_version}  opsets: {opsets}")
    if summary.producer:
        console.print(f"producer: {summary.producer}")
    io = Table("kind", "name", "dtype", "dims", title="inputs / outputs", title_justify="left")
    for kind, items in (("input", summary.inputs), ("output", summary.outputs)):
        for info in items:
            dims = " x ".join(info.dims) + ("  (dynamic)" if info.dynamic else "")
            io.add_row(kind, info.name, info.dtype, dims)
    console.print(io)
    ops = Table("op", "count", title=f"ops ({summary.node_count} nodes)", title_justify="left")
    for op, count in summary.op_histogram.items():
        ops.add_row(op, str(count))
    console.print(ops)
    params = Table("dtype", "parameters", "bytes", title="parameters", title_justify="left")
    for dtype, entry in summary.parameters.items():
        params.add_row(dtype, f"{entry['count']:,}", _bytes(entry["bytes"]))
    console.print(params)
    if summary.external_data:
        console.print("external data: " + ", ".join(summary.external_data))
    if summary.quantized_ops:
        quant = Table("node", "op", "activations", "weights", title="quantized ops", title_justify="left")
        for op in summary.quantized_ops:
            quant.add_row(op.node, op.op_type, op.activation, op.weight)
        console.print(quant)
    if summary.quantization_record:
        console.print("onnxq quantization record:")
        console.print_json(data=summary.quantization_record)


def print_pass_report(console: Console, report: PipelineReport) -> None:
    table = Table("pass", "rewrites", "seconds", "max rel. error", title="passes", title_justify="left")
    for record in report.records:
        error = "" if record.max_error is None else f"{record.max_error:.2e}"
        table.add_row(record.name, str(record.rewrites), f"{record.seconds:.3f}", error)
    console.print(table)


def print_pass_list(console: Console, passes: dict[str, type[OnnxqPass]]) -> None:
    table = Table("pass", "summary", "options")
    for name, cls in passes.items():
        options = ", ".join(f"{n}: {t} = {d!r}" for n, t, d in option_fields(cls))
        table.add_row(name, cls.summary, options)
    console.print(table)
    console.print("pipelines:")
    for name, items in PIPELINES.items():
        console.print(f"  {name}: {','.join(items)}")
