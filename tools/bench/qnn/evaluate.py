"""Child process: one quantized model on the QNN HTP simulator — full offload, placement, fidelity to FP32.

    python -m tools.bench.qnn.evaluate --fp32 M.onnx --candidate Q.onnx --model NAME --eval M.eval.npz \\
        --batch-axes JSON --samples 16 --soc 43 --result R.json

1. Full offload: a session with CPU fallback disabled (``onnxq.backends.qnn.runtime.session(...,
   strict=True)``) is created, or its error is recorded.
2. Placement: ORT's own record of which execution provider got each node
   (``session.record_ep_graph_assignment_info``), counted on the graph ORT partitions — after its graph
   optimizations, so totals differ from the file's node count (both are recorded). Where the strict
   session fails, ``runtime.placement`` adds the refused nodes with the runtime's reason for each.
3. Fidelity: ``--samples`` eval samples spread over the eval file (never calibration data) — more, up to
   ``--max-samples``, where the simulator runs one in under ``--seconds`` / that many (a 16-sample top-1
   agreement moves in steps of 6%) — one per run, on the strict
   session or — where that failed — a session with CPU fallback (so a partly offloaded model still runs),
   against the FP32 file on ORT's CPU provider fed the *same* arrays. Metrics are the CPU benchmark's
   (``tools.bench.evaluate.compare_outputs``, ``tools.bench.tasks``).

QNN compiles static shapes: an eval input whose shape differs from the quantized model's static input
(minilm: eval sentences of 61 tokens, the model fixed at the 72 tokens of its calibration data) is
zero-padded or cut to that shape — for token inputs zero is the padding token with attention mask 0 — and
FP32 runs on the padded arrays too, so both see the same feed; the result records it.

One process per model: the simulator compiles the whole graph per session (seconds to minutes), and a
model that crashes it ends this process, not the benchmark.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench import tasks
from tools.bench.child import first_line, write_result
from onnxq.calibration.data import spread_indices
from tools.bench.evaluate import Feeds, compare_outputs, load_eval, make_session


def static_input_shapes(path: Path) -> dict[str, tuple[int, ...] | None]:
    """Graph input -> its static shape (None where a dim is still dynamic)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    shapes: dict[str, tuple[int, ...] | None] = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        static = all(dim.HasField("dim_value") for dim in dims)
        shapes[value.name] = tuple(dim.dim_value for dim in dims) if static else None
    return shapes


def fit_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-pad or cut ``array`` to ``shape`` (same rank), trailing side of every axis."""
    if array.shape == shape or array.ndim != len(shape):
        return array
    array = array[tuple(slice(0, n) for n in shape)]
    return np.pad(array, [(0, n - m) for n, m in zip(shape, array.shape)])


def fit_feeds(feeds: list[Feeds], shapes: dict[str, tuple[int, ...] | None]) -> tuple[list[Feeds], list[str]]:
    notes, fitted = [], []
    for feed in feeds:
        fitted.append({name: fit_to(value, shapes[name]) if shapes.get(name) else value
                       for name, value in feed.items()})
    for name, value in feeds[0].items():
        if shapes.get(name) and tuple(value.shape) != shapes[name]:
            notes.append(f"eval input '{name}' {list(value.shape)} fitted (zero pad / cut) to the model's static "
                         f"{list(shapes[name])}; FP32 ran on the same arrays")
    return fitted, notes


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


RECORD_ASSIGNMENT = {"session.record_ep_graph_assignment_info": "1"}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class SessionFailed(Exception):
    """Session creation failed; ``log`` holds the runtime's own error lines (the why, where it says)."""

    def __init__(self, error: Exception, log: list[str]) -> None:
        super().__init__(first_line(error))
        self.log = log


def qnn_session(candidate: Path, soc: str, *, strict: bool):
    """A simulator session (``onnxq.backends.qnn.runtime``'s options) that records which EP got each node;
    raises ``SessionFailed`` with the error lines the runtime logged."""
    import onnxruntime as ort

    from onnxq.backends.qnn import runtime

    captured: list[str] = []
    try:
        with runtime.captured_stderr() as captured:
            options = runtime.session_options(soc, strict=strict, config=RECORD_ASSIGNMENT)
            return ort.InferenceSession(str(candidate), sess_options=options)
    except Exception as exc:  # noqa: BLE001 - re-raised with the log that explains it
        errors = [_ANSI.sub("", line).strip() for line in captured if "[E:" in line]
        raise SessionFailed(exc, [line.split("] ", 1)[-1][:400] for line in errors[:3]]) from exc


def assignment(session) -> dict[str, Any]:
    """Nodes per execution provider as ORT partitioned them (after its graph optimizations)."""
    from onnxq.backends.qnn import runtime

    on_htp, elsewhere = 0, {}
    for subgraph in session.get_provider_graph_assignment_info():
        nodes = subgraph.get_nodes()
        if subgraph.ep_name == runtime.EP_NAME:
            on_htp += len(nodes)
            continue
        for node in nodes:
            elsewhere[node.op_type] = elsewhere.get(node.op_type, 0) + 1
    return {"nodes_on_htp": on_htp, "partitioned_nodes": on_htp + sum(elsewhere.values()),
            "cpu_ops": dict(sorted(elsewhere.items()))}


def check_offload(candidate: Path, soc: str) -> dict[str, Any]:
    """Strict session, else the placement report and a session with CPU fallback; returns the record and
    the session to run the eval samples on (None where even the lenient session failed)."""
    from onnxq.backends.qnn import runtime

    record: dict[str, Any] = {"file_nodes": node_count(candidate)}
    start = time.perf_counter()
    try:
        session = qnn_session(candidate, soc, strict=True)
        record.update(full_offload=True, refused={}, refused_ops=[], ran_on="HTP only (strict session)")
    except SessionFailed as exc:  # the runtime's refusal is the measurement
        session = None
        record.update(full_offload=False, strict_error=str(exc), strict_log=exc.log)
    record["strict_session_s"] = time.perf_counter() - start
    if session is None:
        start = time.perf_counter()
        placement = runtime.placement(str(candidate), soc, record["file_nodes"])
        record["refused"] = {name: {"op": op, "reason": reason} for name, (op, reason) in placement.refused.items()}
        record["refused_ops"] = sorted({op for op, _ in placement.refused.values()})
        if placement.error:
            record["placement_error"] = placement.error
        try:
            session = qnn_session(candidate, soc, strict=False)
            record["ran_on"] = "HTP + CPU fallback"
        except SessionFailed as exc:  # a model the simulator cannot even load is a result
            record.update(session_error=str(exc), session_log=exc.log)
        record["placement_s"] = time.perf_counter() - start
    if session is not None:
        record.update(assignment(session))
    return {"record": record, "session": session}


def run_timed(session, feeds: list[Feeds]) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    names = [output.name for output in session.get_outputs()]
    outputs, seconds = [], []
    for feed in feeds:
        tick = time.perf_counter()
        outputs.append(dict(zip(names, session.run(None, feed))))
        seconds.append(time.perf_counter() - tick)
    return outputs, seconds


def sample_count(session, feeds: list[Feeds], args: argparse.Namespace) -> int:
    """``args.samples``, or more (up to ``args.max_samples``) when one simulator run is fast enough that
    they all fit in ``args.seconds``; timed on one sample (after a warm-up run)."""
    if session is None or len(feeds) <= args.samples:
        return min(len(feeds), args.samples)
    try:
        _, seconds = run_timed(session, feeds[:1] * 2)
    except Exception:  # noqa: BLE001 - the real run records the error
        return args.samples
    affordable = int(args.seconds / max(seconds[-1], 1e-6))
    return max(args.samples, min(len(feeds), args.max_samples, affordable))


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from onnxq.backends.qnn import runtime

    result: dict[str, Any] = {"soc_model": args.soc, "versions": runtime.versions(), "notes": []}
    offload = check_offload(args.candidate, args.soc)
    result.update(offload["record"])
    session = offload["session"]
    feeds, labels = load_eval(args.eval, json.loads(args.batch_axes), max(args.samples, args.max_samples))
    feeds, notes = fit_feeds(feeds, static_input_shapes(args.candidate))
    keep = spread_indices(len(feeds), sample_count(session, feeds, args))
    feeds, labels = [feeds[i] for i in keep], None if labels is None else labels[keep]
    result["notes"] += notes
    result["samples"] = len(feeds)
    reference, _ = run_timed(make_session(args.fp32, 0), feeds)  # FP32 on ORT's CPU provider
    if task := tasks.score(args.model, reference, labels, reference=reference):
        result["task_metric"], result["fp32_task"] = task.metric, task.value
    if session is None:
        return result
    try:
        outputs, seconds = run_timed(session, feeds)
    except Exception as exc:  # noqa: BLE001
        result["run_error"] = first_line(exc)
        return result
    result["simulator_s_per_sample"] = float(np.median(seconds))
    result["outputs"] = compare_outputs(reference, outputs)
    in_order = [{name: o[name] for name in reference[0] if name in o} for o in outputs]
    if task := tasks.score(args.model, in_order, labels, reference=reference):
        result["task"] = task.value
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--model", default="", help="zoo name (for its task metric)")
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--batch-axes", default="{}")
    parser.add_argument("--samples", type=int, default=16, help="at least this many eval samples")
    parser.add_argument("--max-samples", type=int, default=96, help="at most this many, when they fit in --seconds")
    parser.add_argument("--seconds", type=float, default=60.0, help="simulator time allowed for the extra samples")
    parser.add_argument("--soc", default="43", help="QNN soc_model id (43: SM8550, HTP v73)")
    parser.add_argument("--result", type=Path, required=True)
    return write_result(evaluate, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
