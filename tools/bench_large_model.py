"""Benchmark: optimize a model with > 2 GB of external weights; peak RSS and time against ORT offline BASIC.

1. Writes (streaming, 64 MB at a time) an MLP of ``--layers`` MatMuls with ``--hidden``² float32 weights in
   one external-data file, with what the passes rewrite: MatMul+BatchNormalization on [N, C] (folded into
   the weight), MatMul+Add, Identity, Dropout, a Constant subgraph and a Reshape to the same shape.
2. Runs, each alone in a child process whose peak RSS comes from ``wait4``: the real CLI (``onnxq
   optimize``) and ORT's offline BASIC optimization of the same file; then an instrumented Python-API run
   that resets the kernel's RSS high-water mark around each phase (load, every pass, write, validation).
3. Checks the onnxq output: the inputs are byte-identical afterwards, the output loads lazily, and ORT gives
   the same numbers as the original on a small batch (a separate child: running the model costs its size).
4. ``--sweep-bn-every K ...``: the CLI's peak RSS on variants with more or fewer weights rewritten.
5. Writes ``--json`` and, with ``--benchmarks-md``, replaces its section of BENCHMARKS.md.

    .venv/bin/python tools/bench_large_model.py --json large.json --benchmarks-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make tools.bench importable

from tools.bench.large_model_report import (  # noqa: E402, F401 - BEGIN/END re-exported for callers
    BEGIN,
    BUDGET_MIB,
    END,
    command_line,
    machine_facts,
    update_benchmarks_md,
    versions,
)
ALIGNMENT = 4096
CHUNK_BYTES = 64 << 20


# ----------------------------------------------------------------------------------------------- model
class ExternalDataWriter:
    """Appends page-aligned tensors to one data file and returns TensorProtos that point at them."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()

    def add(self, name: str, shape: tuple[int, ...], blocks) -> TensorProto:
        """``blocks`` yields float32 arrays whose bytes, concatenated, are the tensor (row-major)."""
        pad = -self.offset % ALIGNMENT
        self._file.write(b"\0" * pad)
        start = self.offset = self.offset + pad
        for block in blocks:
            self._file.write(np.ascontiguousarray(block, dtype="<f4").data)
            self.offset += block.nbytes
        if self.offset - start != 4 * int(np.prod(shape)):
            raise ValueError(f"{name}: wrote {self.offset - start} bytes for shape {shape}")
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", start), ("length", self.offset - start)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        return tensor

    def close(self) -> None:
        self._file.close()


def _random_blocks(rng: np.random.Generator, rows: int, cols: int, scale: float):
    step = max(1, CHUNK_BYTES // (4 * cols))
    for start in range(0, rows, step):
        block = rng.standard_normal((min(step, rows - start), cols), dtype=np.float32)
        block *= np.float32(scale)
        yield block


def _vector(values: np.ndarray):
    yield values.astype(np.float32)


def bn_layers(layers: int, bn_every: int) -> list[int]:
    """Layers that are MatMul + BatchNormalization (the rest are MatMul + Add)."""
    return [i for i in range(layers) if i % bn_every == bn_every - 1]


def write_mlp_model(folder: Path, *, layers: int, hidden: int, bn_every: int = 8, seed: int = 0,
                    name: str = "mlp.onnx", data_name: str | None = None) -> Path:
    """Write ``folder/name`` + its data file (``name.data``) holding one 64 MB block in RAM at most."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = ExternalDataWriter(folder / (data_name or name + ".data"))
    const = helper.make_tensor
    nodes = [  # a same-shape Reshape, and a constant subgraph: bias of layer 0 = b0 * 0.5 + b0_offset
        helper.make_node("Constant", [], ["shape"], value=const("s", TensorProto.INT64, [2], [-1, hidden])),
        helper.make_node("Reshape", ["x", "shape"], ["h0"], name="reshape_same"),
        helper.make_node("Constant", [], ["half"], value=const("half", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Mul", ["b0", "half"], ["b0_half"], name="fold_mul"),
        helper.make_node("Add", ["b0_half", "b0_offset"], ["b0_folded"], name="fold_add"),
    ]
    scale, h, with_bn = float(np.sqrt(2.0 / hidden)), "h0", set(bn_layers(layers, bn_every))
    try:
        inits = [writer.add(n, (hidden,), _vector(rng.normal(0, 0.01, hidden))) for n in ("b0", "b0_offset")]
        for i in range(layers):
            inits.append(writer.add(f"w{i}", (hidden, hidden), _random_blocks(rng, hidden, hidden, scale)))
            nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
            h = f"mm{i}"
            if i in with_bn:  # Linear(bias=False) + BatchNorm1d, as exporters write it
                params = {"scale": rng.uniform(0.5, 1.5, hidden), "bias": rng.normal(0, 0.1, hidden),
                          "mean": rng.normal(0, 0.1, hidden), "var": rng.uniform(0.5, 1.5, hidden)}
                inits += [writer.add(f"bn{i}.{k}", (hidden,), _vector(v)) for k, v in params.items()]
                nodes.append(helper.make_node("BatchNormalization", [h, *(f"bn{i}.{k}" for k in params)],
                                              [f"bn{i}"], name=f"bn{i}", epsilon=1e-5))
                h = f"bn{i}"
            else:
                bias = "b0_folded" if i == 0 else f"b{i}"
                if i:
                    inits.append(writer.add(bias, (hidden,), _vector(rng.normal(0, 0.01, hidden))))
                nodes.append(helper.make_node("Add", [h, bias], [f"add{i}"], name=f"add{i}"))
                h = f"add{i}"
            for op, every, phase in (("Identity", 5, 2), ("Dropout", 7, 3)):
                if i % every == phase:
                    nodes.append(helper.make_node(op, [h], [f"{op.lower()}{i}"], name=f"{op.lower()}{i}"))
                    h = f"{op.lower()}{i}"
            out = "y" if i == layers - 1 else f"relu{i}"
            nodes.append(helper.make_node("Relu", [h], [out], name=f"relu{i}"))
            h = out
    finally:
        writer.close()
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", hidden]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "mlp", io[:1], io[1:], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="onnxq-bench")
    proto.ir_version = 8
    path = folder / name
    path.write_bytes(proto.SerializeToString())
    return path


# ----------------------------------------------------------------------------------------- measuring
def proc_status() -> dict[str, int]:
    """VmHWM / VmRSS / RssAnon / RssFile of this process in MiB (Linux)."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {key: int(fields[key].split()[0]) // 1024 for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0). It also resets what ``ru_maxrss`` reports."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


class PhaseMeter:
    """Seconds and peak RSS per phase; a nested phase's peak also counts for its parent."""

    def __init__(self):
        self.phases: list[dict] = []
        self._open: list[list] = []  # [record, peak so far, start time]

    def __call__(self, name: str):
        meter = self

        class _Phase:
            def __enter__(self):
                if meter._open:
                    meter._open[-1][1] = max(meter._open[-1][1], proc_status()["VmHWM"])
                _reset_peak()
                meter.phases.append({"phase": name, "depth": len(meter._open)})
                meter._open.append([meter.phases[-1], 0, time.perf_counter()])

            def __exit__(self, *exc):
                record, peak, start = meter._open.pop()
                status = proc_status()
                record.update(seconds=round(time.perf_counter() - start, 3),
                              peak_rss_mib=max(peak, status["VmHWM"]),
                              rss_anon_mib_after=status["RssAnon"], rss_file_mib_after=status["RssFile"])
                if meter._open:
                    meter._open[-1][1] = max(meter._open[-1][1], record["peak_rss_mib"])
                _reset_peak()

        return _Phase()

    def wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def wrapped(*args, **kwargs):
            with self(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, wrapped)


def run_child(argv: list[str], *, log: Path) -> dict:
    """Run ``argv``; return wall time, peak RSS (this child alone, from wait4) and its JSON stdout."""
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        stdout = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"child failed (rc {proc.returncode}): {shlex.join(argv)}\n{tail}")
    result = {"wall_s": round(time.perf_counter() - start, 2),
              "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    text = stdout.decode().strip()
    if text.startswith("{"):
        result["report"] = json.loads(text.splitlines()[-1])
    return result


def run_timed(argv: list[str], *, log: Path) -> dict:
    """``run_child`` starting with no dirty pages, plus the time to flush what it wrote (both write GBs)."""
    os.sync()
    result = run_child(argv, log=log)
    start = time.perf_counter()
    os.sync()
    result["wall_incl_sync_s"] = round(result["wall_s"] + time.perf_counter() - start, 2)
    return result


def _child(mode: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", mode, *args]


def _onnxq_cli(src: Path, dst: Path, passes: str) -> list[str]:
    script = Path(sys.executable).with_name("onnxq")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "onnxq.cli"]
    return [*head, "optimize", str(src), "-o", str(dst), "--passes", passes, "--quiet"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ children
def child_onnxq_phases(src: str, dst: str, passes: str, external_data: str = "auto") -> dict:
    """The CLI's steps through the Python API, with each phase's peak RSS (external_data: auto|true|false)."""
    meter = PhaseMeter()
    with meter("import onnxq"):
        import onnx
        import onnxruntime

        from onnxq import model_io, pipeline, runtime_compat
    with meter("load (lazy)"):
        loaded = model_io.load_model(src)
    model, records = loaded.model, []
    for pass_ in pipeline.parse_pipeline(passes):
        with meter(f"pass {pass_.name}"):
            model, report = pipeline.run_passes(model, [pass_])
        records.append({"pass": pass_.name, "rewrites": report.total_rewrites})
    meter.wrap(runtime_compat, "target_ir_version", "save: IR-version probe (ORT)")
    meter.wrap(model_io, "_write", "save: write (ir.save)")
    meter.wrap(onnx.checker, "check_model", "save: onnx.checker")
    meter.wrap(onnxruntime, "InferenceSession", "ORT InferenceSession()")
    with meter("save (total, nested phases below)"):
        model_io.save_model(model, dst, protected=[loaded.path, *loaded.data_files],
                            external_data={"auto": None, "true": True, "false": False}[external_data])
    return {"phases": meter.phases, "passes": records}


def child_ort_basic(src: str, dst: str) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = dst
    prefix = "session.optimized_model_external_initializers_"
    options.add_session_config_entry(prefix + "file_name", Path(dst).name + ".data")
    options.add_session_config_entry(prefix + "min_size_in_bytes", "1024")
    start = time.perf_counter()
    ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
    return {"session_s": round(time.perf_counter() - start, 2)}


def child_check_output(src: str, out: str, batch: str) -> dict:
    """Lazy load of the output (RSS growth), op counts, then ORT numerics of original vs output."""
    import onnx_ir as ir

    from onnxq import model_io, numerics

    before = proc_status()["VmRSS"]
    model = model_io.load_model(out).model
    growth = proc_status()["VmRSS"] - before
    tensors = [v.const_value for v in model.graph.initializers.values() if v.const_value is not None]
    external = all(isinstance(t, ir.ExternalTensor) for t in tensors if t.nbytes > 4096)
    ops: dict[str, int] = {}
    for node in model.graph:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    hidden = model.graph.inputs[0].shape[1]
    del model, tensors
    feeds = {"x": np.random.default_rng(1).standard_normal((int(batch), hidden)).astype(np.float32)}
    reference = numerics.run_model(src, feeds)["y"]
    actual = numerics.run_model(out, feeds)["y"]
    return {"load_rss_growth_mib": growth, "initializers_external": external,
            "ops": dict(sorted(ops.items())),
            "relative_error": float(numerics.relative_error(reference, actual)),
            "finite": bool(np.isfinite(actual).all())}


CHILDREN = {"onnxq-phases": child_onnxq_phases, "ort-basic": child_ort_basic,
            "check-output": child_check_output}


# --------------------------------------------------------------------------------------------- driver
def _data_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".data"))


def _files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in [path, *_data_files(path)])


def _remove_model(path: Path) -> None:
    for p in [path, *_data_files(path)]:
        p.unlink(missing_ok=True)


def _summary(runs: list[dict], out: Path) -> dict:
    """Best-of times, worst peak RSS, over ``runs``."""
    best = {key: min(r[key] for r in runs) for key in ("wall_s", "wall_incl_sync_s")}
    return {**best, "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "output_bytes": _files_size(out),
            "runs": runs}


def compare(src: Path, work: Path, passes: str, repeat: int) -> dict:
    """The CLI and ORT BASIC, alternating, ``repeat`` times each, from a warm page cache."""
    onnxq_out, ort_out = work / "onnxq" / "opt.onnx", work / "ort" / "opt.onnx"
    for out in (onnxq_out, ort_out):
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir()
    runs: dict[str, list[dict]] = {"onnxq": [], "ort_basic": []}
    for _ in range(repeat):
        for out in (onnxq_out, ort_out):
            _remove_model(out)
        runs["onnxq"].append(run_timed(_onnxq_cli(src, onnxq_out, passes), log=work / "onnxq.log"))
        runs["ort_basic"].append(run_timed(_child("ort-basic", str(src), str(ort_out)), log=work / "ort.log"))
    q, o = _summary(runs["onnxq"], onnxq_out), _summary(runs["ort_basic"], ort_out)
    o["session_s"] = min(r["report"]["session_s"] for r in runs["ort_basic"])
    shutil.rmtree(ort_out.parent)
    ratio = {"time_onnxq_over_ort": round(q["wall_s"] / o["wall_s"], 2),
             "time_incl_sync_onnxq_over_ort": round(q["wall_incl_sync_s"] / o["wall_incl_sync_s"], 2),
             "rss_onnxq_over_ort": round(q["peak_rss_mib"] / o["peak_rss_mib"], 3)}
    return {"onnxq": q, "ort_basic": o, "ratio": ratio}


def sweep(args: argparse.Namespace, work: Path, passes: str) -> list[dict]:
    """The CLI's peak RSS when more or fewer weights are rewritten (one BN fold = one new weight)."""
    rows = []
    for bn_every in args.sweep_bn_every:
        src = write_mlp_model(work / "sweep", layers=args.layers, hidden=args.hidden, bn_every=bn_every,
                              seed=args.seed)
        out = work / "sweep" / "opt.onnx"
        run = run_timed(_onnxq_cli(src, out, passes), log=work / "sweep.log")
        folds = len(bn_layers(args.layers, bn_every))
        rows.append({"bn_every": bn_every, "folded_weights": folds, **run,
                     "rewritten_mib": round(folds * 4 * args.hidden**2 / 2**20)})
        shutil.rmtree(work / "sweep")
    return rows


def run_benchmark(args: argparse.Namespace) -> dict:
    work, passes = Path(args.workdir).resolve(), args.passes
    work.mkdir(parents=True, exist_ok=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    src = write_mlp_model(work / "model", layers=args.layers, hidden=args.hidden, bn_every=args.bn_every,
                          seed=args.seed)
    generate_s = time.perf_counter() - start
    inputs = [src, *_data_files(src)]
    hashes = {p.name: sha256(p) for p in inputs}  # also warms the page cache for both optimizers
    folds = len(bn_layers(args.layers, args.bn_every))
    model = {"layers": args.layers, "hidden": args.hidden, "bn_every": args.bn_every, "seed": args.seed,
             "folded_weights": folds, "rewritten_mib": round(folds * 4 * args.hidden**2 / 2**20),
             "external_data_bytes": _files_size(src) - src.stat().st_size, "generate_s": round(generate_s, 1)}
    result = {"date": datetime.date.today().isoformat(), "command": command_line(Path(__file__)), "machine": machine_facts(),
              "load_average_1min_at_start": round(load_before, 2), "versions": versions(), "model": model,
              "passes": passes, **compare(src, work, passes, args.repeat)}
    out = work / "onnxq" / "opt.onnx"
    check = run_child(_child("check-output", str(src), str(out), str(args.batch)), log=work / "check.log")
    unchanged = all(sha256(p) == hashes[p.name] for p in inputs)
    result["check"] = {**check["report"], "peak_rss_mib": check["peak_rss_mib"], "wall_s": check["wall_s"],
                       "batch": args.batch, "inputs_unchanged": unchanged}
    _remove_model(out)
    phased = run_child(_child("onnxq-phases", str(src), str(out), passes), log=work / "phases.log")
    # Not wait4's figure: every phase resets the high-water mark that it reads.
    peak = max(p["peak_rss_mib"] for p in phased["report"]["phases"])
    result["onnxq_phases"] = {"peak_rss_mib": peak, "wall_s": phased["wall_s"], **phased["report"]}
    if not args.keep:
        shutil.rmtree(work / "model"), shutil.rmtree(out.parent)
    result["sweep"] = sweep(args, work, passes)
    result["under_1_gib"] = result["onnxq"]["peak_rss_mib"] < BUDGET_MIB
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=str(ROOT / ".cache" / "bench-large"), help="for GB-sized files")
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--bn-every", type=int, default=8, help="every K-th layer is MatMul + BatchNorm")
    parser.add_argument("--sweep-bn-every", type=int, nargs="*", default=[], metavar="K",
                        help="also measure the CLI's peak RSS on variants with these --bn-every values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4, help="batch of the numeric spot check")
    parser.add_argument("--passes", default="default", help="onnxq pipeline (name or text)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each optimizer (best time kept)")
    parser.add_argument("--keep", action="store_true", help="keep the generated model and onnxq's output")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--benchmarks-md", type=Path, help="replace the large-model section of this file")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](*args.child[1:])))
        return 0
    result = run_benchmark(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.benchmarks_md:
        update_benchmarks_md(args.benchmarks_md, result)
    brief = {k: {n: v for n, v in result[k].items() if n != "runs"} for k in ("onnxq", "ort_basic")}
    print(json.dumps({**brief, "ratio": result["ratio"], "under_1_gib": result["under_1_gib"]}))
    return 0 if result["under_1_gib"] else 1


if __name__ == "__main__":
    sys.exit(main())
