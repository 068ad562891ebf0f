"""Child process: how close each quantized model is to FP32 on the eval set, and how fast, in one process.

    python -m tools.bench.evaluate --fp32 M.onnx --candidate onnxq=A.onnx --candidate ort=B.onnx \\
        --eval M.eval.npz --batch-axes JSON --samples 200 --result R.json

Fidelity uses the model's *eval* samples (never the calibration ones), one sample per run, on ORT's CPU
provider. For every float output: relative L2 error and SQNR over all samples (``onnxq.quant.metrics``),
mean per-sample cosine similarity, and — for outputs whose last axis is a class/vocabulary/bin axis
(rank ≥ 2, last dim > 1) — top-1 agreement of the argmax over that axis. Non-float outputs: fraction of
samples whose values are identical. Where the eval file has labels: the task metric (``tasks``) of FP32
and of each candidate.

Latency: every session (FP32 first) gets the same options — full graph optimizations, the same intra-op
thread count, one inter-op thread — and the same one-sample feed; after warm-up they are timed
*interleaved*, round after round, so background noise hits all alike; at least ``--rounds`` rounds, more
for fast models until ``--latency-budget`` seconds have passed. Ratio = FP32 median / candidate median
(> 1: the quantized model is faster).

One intra-op thread by default (``--threads``): sessions that own thread pools cannot be timed side by
side in one process, because an idle pool's threads spin waiting for work on the cores the next session
runs on. On this 2-core machine that put the FP32 YOLOv8n at 23 to 42 ms (14 ms with spinning off),
measured an unchanged copy of it at 0.79-0.87x of itself, and an output with nothing quantized at 0.56x.
With ``--threads`` > 1 spinning is switched off instead, which costs models of many small ops a wake-up
per op, so those figures favour FP32's shorter graphs.

All sessions live in this process at once, which is why it is a child: a model that crashes ORT ends
this process, not the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench import tasks
from tools.bench.child import first_line, write_result

Feeds = dict[str, np.ndarray]


def make_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads > 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_all(session, feeds: list[Feeds]) -> list[dict[str, np.ndarray]]:
    names = [output.name for output in session.get_outputs()]
    return [dict(zip(names, session.run(None, feed))) for feed in feeds]


def _cosine(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    values = []
    for ref, got in zip(reference, actual):
        a, b = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        values.append(1.0 if norms == 0.0 and np.array_equal(a, b) else (float(a @ b) / norms if norms else 0.0))
    return float(np.mean(values)) if values else float("nan")


def compare_outputs(reference: list[dict], actual: list[dict]) -> dict[str, dict[str, Any]]:
    """Per-output fidelity of ``actual`` against ``reference`` (lists of per-sample output dicts)."""
    from onnxq.quant import metrics

    result: dict[str, dict[str, Any]] = {}
    for name, first in reference[0].items():
        if name not in actual[0]:
            result[name] = {"missing": True}
            continue
        refs, gots = [r[name] for r in reference], [a[name] for a in actual]
        if not np.issubdtype(np.asarray(first).dtype, np.floating):
            same = np.mean([np.array_equal(r, g) for r, g in zip(refs, gots)])
            result[name] = {"identical_fraction": float(same)}
            continue
        ref, got = metrics.stacked(reference, name), metrics.stacked(actual, name)
        entry = {"relative_l2": metrics.relative_l2(ref, got), "sqnr_db": metrics.sqnr_db(ref, got),
                 "cosine": _cosine(refs, gots), "shape": list(np.shape(first))}
        if np.ndim(first) >= 2 and np.shape(first)[-1] > 1 and all(np.shape(g) == np.shape(first) for g in gots):
            entry["top1_agreement"] = metrics.top1_agreement(refs, gots)
        result[name] = entry
    return result


def interleaved_latency(sessions: list, feed: Feeds, min_rounds: int, budget_s: float) -> tuple[list[float], int]:
    """Median seconds per session, timed interleaved; returns (medians, rounds)."""
    for session in sessions:
        for _ in range(3):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or (time.perf_counter() - start < budget_s and rounds < 20 * min_rounds):
        for index, session in enumerate(sessions):
            tick = time.perf_counter()
            session.run(None, feed)
            times[index].append(time.perf_counter() - tick)
        rounds += 1
    return [float(np.median(t)) for t in times], rounds


def load_eval(path: Path, batch_axes: dict, samples: int) -> tuple[list[Feeds], np.ndarray | None]:
    """``samples`` eval samples spread evenly over the file (zoo eval sets are ordered by source: the first
    16 of EfficientNet-Lite0's would be crops of two photos), or all of them if there are fewer."""
    from models.artifacts import batches, read_samples, split_eval
    from onnxq.calibration.data import spread_indices

    inputs, labels = split_eval(read_samples(path))
    total = min((len(array) for array in inputs.values()), default=0)
    keep = np.asarray(spread_indices(total, samples) if samples < total else range(total), dtype=np.int64)
    inputs = {name: array[keep] for name, array in inputs.items()}
    feeds = list(batches(inputs, batch_axes, batch_size=1))
    return feeds, None if labels is None else labels[keep]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    feeds, labels = load_eval(args.eval, json.loads(args.batch_axes), args.samples)
    threads = args.threads or os.cpu_count() or 1
    fp32 = make_session(args.fp32, threads)
    reference = run_all(fp32, feeds)
    result: dict[str, Any] = {"samples": len(feeds), "threads": threads, "fp32": {}, "candidates": {}}
    if task := tasks.score(args.model, reference, labels, reference=reference):
        result["task_metric"], result["fp32"]["task"] = task.metric, task.value
    timed = []
    for spec in args.candidate:
        name, path = spec.split("=", 1)
        entry: dict[str, Any] = {"loaded": False, "ran": False}
        result["candidates"][name] = entry
        try:
            session = make_session(Path(path), threads)
            entry["loaded"] = True
            outputs = run_all(session, feeds)
            entry["ran"] = True
        except Exception as exc:  # noqa: BLE001 - a model ORT refuses is a result, not a crash
            entry["error"] = first_line(exc)
            continue
        entry["outputs"] = compare_outputs(reference, outputs)
        in_order = [{name: o[name] for name in reference[0] if name in o} for o in outputs]
        if task := tasks.score(args.model, in_order, labels, reference=reference):
            entry["task"] = task.value
        timed.append((name, session))
    if args.rounds > 0:
        medians, rounds = interleaved_latency([fp32] + [s for _, s in timed], feeds[0], args.rounds,
                                              args.latency_budget)
        result["latency_rounds"] = rounds
        result["fp32"]["latency_ms"] = medians[0] * 1e3
        for (name, _), median in zip(timed, medians[1:]):
            result["candidates"][name]["latency_ms"] = median * 1e3
            result["candidates"][name]["latency_ratio"] = medians[0] / median if median > 0 else None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--model", default="", help="zoo name (for its task metric)")
    parser.add_argument("--candidate", action="append", default=[], help="NAME=PATH (repeatable)")
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--batch-axes", default="{}")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20, help="at least this many timed rounds")
    parser.add_argument("--latency-budget", type=float, default=3.0, help="seconds of timing for fast models")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: all cores)")
    parser.add_argument("--result", type=Path, required=True)
    return write_result(evaluate, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
