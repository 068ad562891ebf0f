"""Benchmark: optimize a model with > 2 GB of external weights; peak RSS and time against ORT offline BASIC.

1. Writes (streaming, 64 MB at a time) an MLP of ``--layers`` MatMuls with ``--hidden``² float32 weights in
   one external-data file, with what the passes rewrite: BatchNormalization on [N, C], Identity, Dropout,
   a Constant subgraph to fold and a Reshape to the same shape. Opset 13, IR 8, dynamic batch dim.
2. Runs, each alone in a child process whose peak RSS comes from ``wait4``: the real CLI
   (``onnxq optimize``), ORT's offline BASIC optimization of the same file, and (``--phases``) an
   instrumented Python-API run that resets the kernel's RSS high-water mark around each phase.
3. Checks the onnxq output: the inputs are byte-identical afterwards, the output loads lazily, and ORT gives
   the same numbers as the original on a small batch (a separate child: running the model costs its size).
4. Writes ``--json`` and, with ``--benchmarks-md``, replaces its section of BENCHMARKS.md.

    .venv/bin/python tools/bench_large_model.py --workdir .cache/bench-large --json large.json \\
        --benchmarks-md BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
ALIGNMENT = 4096
CHUNK_BYTES = 64 << 20
BEGIN, END = "<!-- bench:large-model:begin -->", "<!-- bench:large-model:end -->"
MIB = 1 << 20


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
        length = self.offset - start
        assert length == 4 * int(np.prod(shape)), f"{name}: wrote {length} bytes for shape {shape}"
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", start), ("length", length)):
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


def write_mlp_model(folder: Path, *, layers: int, hidden: int, bn_every: int = 8, seed: int = 0) -> Path:
    """Write ``folder/mlp.onnx`` + ``mlp.onnx.data`` without holding more than one 64 MB block in RAM."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlp.onnx"
    rng = np.random.default_rng(seed)
    writer = ExternalDataWriter(folder / "mlp.onnx.data")
    inits, nodes = [], []
    nodes.append(helper.make_node("Constant", [], ["shape"], value=helper.make_tensor(
        "shape_value", TensorProto.INT64, [2], [-1, hidden])))
    nodes.append(helper.make_node("Reshape", ["x", "shape"], ["h0"], name="reshape_same"))
    # A constant subgraph: bias of layer 0 = b0 * half + offset.
    nodes.append(helper.make_node("Constant", [], ["half"], value=helper.make_tensor(
        "half_value", TensorProto.FLOAT, [1], [0.5])))
    nodes.append(helper.make_node("Mul", ["b0", "half"], ["b0_half"], name="fold_mul"))
    nodes.append(helper.make_node("Add", ["b0_half", "b0_offset"], ["b0_folded"], name="fold_add"))
    inits.append(writer.add("b0", (hidden,), _vector(rng.normal(0, 0.01, hidden))))
    inits.append(writer.add("b0_offset", (hidden,), _vector(rng.normal(0, 0.01, hidden))))
    scale = float(np.sqrt(2.0 / hidden))
    h = "h0"
    try:
        for i in range(layers):
            inits.append(writer.add(f"w{i}", (hidden, hidden), _random_blocks(rng, hidden, hidden, scale)))
            nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
            h = f"mm{i}"
            if i % bn_every != bn_every - 1:  # Linear(bias=True); Linear(bias=False) + BatchNorm1d otherwise
                bias = "b0_folded" if i == 0 else f"b{i}"
                if i:
                    inits.append(writer.add(bias, (hidden,), _vector(rng.normal(0, 0.01, hidden))))
                nodes.append(helper.make_node("Add", [h, bias], [f"add{i}"], name=f"add{i}"))
                h = f"add{i}"
            else:
                params = {"scale": rng.uniform(0.5, 1.5, hidden), "bias": rng.normal(0, 0.1, hidden),
                          "mean": rng.normal(0, 0.1, hidden), "var": rng.uniform(0.5, 1.5, hidden)}
                for key, values in params.items():
                    inits.append(writer.add(f"bn{i}.{key}", (hidden,), _vector(values)))
                nodes.append(helper.make_node("BatchNormalization", [h, *(f"bn{i}.{k}" for k in params)],
                                              [f"bn{i}"], name=f"bn{i}", epsilon=1e-5))
                h = f"bn{i}"
            if i % 5 == 2:
                nodes.append(helper.make_node("Identity", [h], [f"id{i}"], name=f"identity{i}"))
                h = f"id{i}"
            if i % 7 == 3:
                nodes.append(helper.make_node("Dropout", [h], [f"drop{i}"], name=f"dropout{i}"))
                h = f"drop{i}"
            out = "y" if i == layers - 1 else f"relu{i}"
            nodes.append(helper.make_node("Relu", [h], [out], name=f"relu{i}"))
            h = out
    finally:
        writer.close()
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", hidden])], inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="bench_large_model")
    proto.ir_version = 8
    path.write_bytes(proto.SerializeToString())
    return path


# ----------------------------------------------------------------------------------------- measuring
def _proc_status() -> dict[str, int]:
    """VmHWM / VmRSS / RssAnon / RssFile of this process in MiB."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) // 1024
    return values


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:  # "5" resets VmHWM to the current RSS (Linux ≥ 4.0)
        refs.write("5")


class PhaseMeter:
    """Peak RSS per phase (nested phases fold into their parent's peak) via the kernel high-water mark."""

    def __init__(self):
        self.phases: list[dict] = []
        self._stack: list[list] = []

    def __call__(self, name: str):
        meter = self

        class _Phase:
            def __enter__(self):
                if meter._stack:
                    meter._stack[-1][1] = max(meter._stack[-1][1], _proc_status()["VmHWM"])
                _reset_peak()
                meter.phases.append({"phase": name, "depth": len(meter._stack)})  # listed in start order, filled in on exit
                meter._stack.append([meter.phases[-1], 0, time.perf_counter()])

            def __exit__(self, *exc):
                record, peak, start = meter._stack.pop()
                status = _proc_status()
                peak = max(peak, status["VmHWM"])
                record.update({"seconds": round(time.perf_counter() - start, 3), "peak_rss_mib": peak,
                               "rss_anon_mib_after": status["RssAnon"], "rss_file_mib_after": status["RssFile"]})
                if meter._stack:
                    meter._stack[-1][1] = max(meter._stack[-1][1], peak)
                _reset_peak()

        return _Phase()

    def wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def wrapped(*args, **kwargs):
            with self(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, wrapped)


def run_child(argv: list[str], *, log: Path | None = None) -> dict:
    """Run ``argv``; return exit code, wall time, peak RSS (this child alone, from wait4) and JSON stdout."""
    start = time.perf_counter()
    with open(log or os.devnull, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    result = {"argv": argv, "rc": proc.returncode, "wall_s": round(time.perf_counter() - start, 2),
              "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    text = stdout.decode().strip()
    if text.startswith("{"):
        result["report"] = json.loads(text.splitlines()[-1])
    if proc.returncode != 0:
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"child failed (rc {proc.returncode}): {shlex.join(argv)}\n{tail}")
    return result


def run_timed(argv: list[str], *, log: Path) -> dict:
    """``run_child`` starting with no dirty pages, plus the time to flush what it wrote (both write ~GBs)."""
    os.sync()
    result = run_child(argv, log=log)
    start = time.perf_counter()
    os.sync()
    result["wall_incl_sync_s"] = round(result["wall_s"] + time.perf_counter() - start, 2)
    return result


def _child(mode: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", mode, *args]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def choose_passes() -> tuple[str, dict[str, str]]:
    """The ``default`` pipeline, less passes not written yet or failing on a tiny copy of the benchmark model.

    Returns the pipeline text and, for each pass left out, why.
    """
    import tempfile

    from onnxq import model_io, pass_api, pipeline

    have, left_out = pass_api.available_passes(), {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_mlp_model(Path(tmp), layers=8, hidden=8, bn_every=4)
        for name in dict.fromkeys(pipeline.PIPELINES["default"]):
            if name not in have:
                left_out[name] = "not written yet"
                continue
            try:
                have[name]()(model_io.load_model(tiny).model)
            except Exception as exc:  # noqa: BLE001 - a work-in-progress pass must not stop the benchmark
                left_out[name] = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    if not left_out:
        return "default", {}
    return ",".join(p for p in pipeline.PIPELINES["default"] if p not in left_out), left_out


# ------------------------------------------------------------------------------------------ children
def child_onnxq_phases(src: str, dst: str, passes: str) -> dict:
    """The CLI's steps through the Python API, with each phase's peak RSS."""
    meter = PhaseMeter()
    with meter("import onnxq"):
        import onnx as _onnx
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
    meter.wrap(_onnx.checker, "check_model", "save: onnx.checker")
    meter.wrap(onnxruntime, "InferenceSession", "ORT InferenceSession()")
    with meter("save (total, nested phases above)"):
        model_io.save_model(model, dst, protected=[loaded.path, *loaded.data_files])
    return {"phases": meter.phases, "passes": records}


def child_ort_basic(src: str, dst: str) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = dst
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", Path(dst).name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    start = time.perf_counter()
    ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
    return {"session_s": round(time.perf_counter() - start, 2), "ort": ort.__version__}


def child_check_output(src: str, out: str, batch: int) -> dict:
    """Lazy load of the output (RSS growth), op counts, then ORT numerics of original vs output."""
    import onnx_ir as ir

    from onnxq import model_io, numerics

    before = _proc_status()["VmRSS"]
    model = model_io.load_model(out).model
    growth = _proc_status()["VmRSS"] - before
    lazy = all(isinstance(v.const_value, ir.ExternalTensor)
               for v in model.graph.initializers.values() if v.const_value is not None and v.const_value.nbytes > 4096)
    ops: dict[str, int] = {}
    for node in model.graph:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    hidden = model.graph.inputs[0].shape[1]
    del model
    feeds = {"x": np.random.default_rng(1).standard_normal((batch, hidden)).astype(np.float32)}
    reference = numerics.run_model(src, feeds)["y"]
    actual = numerics.run_model(out, feeds)["y"]
    return {"load_rss_growth_mib": growth, "initializers_lazy": lazy, "ops": dict(sorted(ops.items())),
            "relative_error": float(numerics.relative_error(reference, actual)),
            "finite": bool(np.isfinite(actual).all()), "output_abs_mean": float(np.abs(reference).mean())}


def child_main(mode: str, args: list[str]) -> None:
    handlers = {"onnxq-phases": child_onnxq_phases, "ort-basic": child_ort_basic,
                "check-output": lambda s, o, b: child_check_output(s, o, int(b))}
    print(json.dumps(handlers[mode](*args)))


# --------------------------------------------------------------------------------------------- driver
def _data_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".data"))


def _files_size(path: Path) -> int:
    return sum(p.stat().st_size for p in [path, *_data_files(path)])


def _remove_model(path: Path) -> None:
    for p in [path, *_data_files(path)]:
        p.unlink(missing_ok=True)


def _onnxq_cli(src: Path, dst: Path, passes: str) -> list[str]:
    script = Path(sys.executable).with_name("onnxq")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "onnxq.cli"]
    return [*head, "optimize", str(src), "-o", str(dst), "--passes", passes, "--quiet"]


def run_benchmark(args: argparse.Namespace) -> dict:
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    passes, missing = (args.passes, {}) if args.passes else choose_passes()
    start = time.perf_counter()
    src = write_mlp_model(work / "model", layers=args.layers, hidden=args.hidden, bn_every=args.bn_every,
                          seed=args.seed)
    generate_s = time.perf_counter() - start
    inputs = [src, *_data_files(src)]
    hashes = {p.name: sha256(p) for p in inputs}  # also warms the page cache for both optimizers
    onnxq_out, ort_out = work / "onnxq" / "opt.onnx", work / "ort" / "opt.onnx"
    for folder in (onnxq_out.parent, ort_out.parent):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    runs: dict[str, list[dict]] = {"onnxq": [], "ort_basic": []}
    for _ in range(args.repeat):
        for out in (onnxq_out, ort_out):
            _remove_model(out)
        runs["onnxq"].append(run_timed(_onnxq_cli(src, onnxq_out, passes), log=work / "onnxq.log"))
        runs["ort_basic"].append(run_timed(_child("ort-basic", str(src), str(ort_out)), log=work / "ort.log"))
    # Best of --repeat; page cache warm (the inputs were just hashed), no dirty pages at each start.
    onnxq_best = min(runs["onnxq"], key=lambda r: r["wall_s"])
    ort_best = min(runs["ort_basic"], key=lambda r: r["wall_s"])
    result = {
        "date": datetime.date.today().isoformat(),
        "command": _command_line(),
        "machine": _machine(),
        "versions": _versions(),
        "model": {"layers": args.layers, "hidden": args.hidden, "bn_every": args.bn_every, "seed": args.seed,
                  "external_data_bytes": sum(p.stat().st_size for p in _data_files(src)),
                  "generate_s": round(generate_s, 1)},
        "passes": passes, "passes_missing": missing,
        "onnxq": {"wall_s": onnxq_best["wall_s"], "wall_incl_sync_s": _best(runs["onnxq"], "wall_incl_sync_s"),
                  "peak_rss_mib": max(r["peak_rss_mib"] for r in runs["onnxq"]),
                  "output_bytes": _files_size(onnxq_out), "runs": runs["onnxq"]},
        "ort_basic": {"wall_s": ort_best["wall_s"], "wall_incl_sync_s": _best(runs["ort_basic"], "wall_incl_sync_s"),
                      "session_s": ort_best["report"]["session_s"],
                      "peak_rss_mib": max(r["peak_rss_mib"] for r in runs["ort_basic"]),
                      "output_bytes": _files_size(ort_out), "runs": runs["ort_basic"]},
    }
    result["ratio"] = {
        "time_onnxq_over_ort": round(result["onnxq"]["wall_s"] / result["ort_basic"]["wall_s"], 2),
        "time_incl_sync_onnxq_over_ort": round(
            result["onnxq"]["wall_incl_sync_s"] / result["ort_basic"]["wall_incl_sync_s"], 2),
        "rss_onnxq_over_ort": round(result["onnxq"]["peak_rss_mib"] / result["ort_basic"]["peak_rss_mib"], 3),
    }
    _remove_model(ort_out)
    check = run_child(_child("check-output", str(src), str(onnxq_out), str(args.batch)), log=work / "check.log")
    result["check"] = {**check["report"], "peak_rss_mib": check["peak_rss_mib"], "wall_s": check["wall_s"],
                       "batch": args.batch, "inputs_unchanged": {p.name: sha256(p) == hashes[p.name] for p in inputs}}
    if args.phases:
        _remove_model(onnxq_out)
        phased = run_child(_child("onnxq-phases", str(src), str(onnxq_out), passes), log=work / "phases.log")
        result["onnxq_phases"] = {"peak_rss_mib": phased["peak_rss_mib"], "wall_s": phased["wall_s"],
                                  **phased["report"]}
    result["under_1_gib"] = result["onnxq"]["peak_rss_mib"] < 1024
    if not args.keep:
        shutil.rmtree(work / "model"), shutil.rmtree(onnxq_out.parent), shutil.rmtree(ort_out.parent)
    return result


def _best(runs: list[dict], key: str) -> float:
    return min(r[key] for r in runs)


def _command_line() -> str:
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    return shlex.join([python, os.path.relpath(Path(__file__).resolve(), ROOT), *sys.argv[1:]])


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(), "arch": platform.machine(), "cpu": cpu,
            "memory_gib": round(memory / (1 << 30), 1), "gpu": "none used (CPUExecutionProvider)"}


def _versions() -> dict:
    from importlib.metadata import version

    names = ("onnxq", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


# -------------------------------------------------------------------------------------- BENCHMARKS.md
HEADER = """# onnxq benchmarks

Numbers in this file are written by the scripts in `tools/`, never typed by hand; each section says the
command that produced it. Rerun the command to refresh a section.
"""


def render_section(r: dict) -> str:
    m, q, o, c = r["model"], r["onnxq"], r["ort_basic"], r["check"]
    gb = m["external_data_bytes"] / 1e9
    passes = f"`{r['passes']}`" + ("" if not r["passes_missing"] else " (the default pipeline less: " + "; ".join(
        f"{name} — {why}" for name, why in r["passes_missing"].items()) + ")")
    lines = [
        BEGIN, "## Large model (> 2 GB external data)", "",
        f"Written by `tools/bench_large_model.py` on {r['date']}; do not edit by hand. Command:", "",
        f"    {r['command']}", "",
        f"Machine: {r['machine']['cpus']}-core {r['machine']['arch']} ({r['machine']['cpu']}), "
        f"{r['machine']['memory_gib']} GiB RAM, no GPU. "
        + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".", "",
        f"Model: MLP of {m['layers']} MatMul+Add+Relu layers with {m['hidden']}×{m['hidden']} float32 weights; "
        f"every {m['bn_every']}-th layer is MatMul+BatchNormalization instead (weights folded by fold-bn), "
        "Identity/Dropout no-ops, a Constant subgraph and a "
        f"same-shape Reshape; opset 13, IR 8, dynamic batch; **{gb:.2f} GB of external data** in one file.", "",
        f"onnxq passes: {passes}.", "",
        f"Each optimizer runs alone in a child process and writes a {q['output_bytes'] / 1e9:.2f} GB "
        f"(onnxq) / {o['output_bytes'] / 1e9:.2f} GB (ORT) model. Peak RSS is the kernel's "
        "`ru_maxrss` of that process; wall time includes interpreter start-up; every run starts with the input "
        "in the page cache and no dirty pages (`sync`), and the second time column adds the `sync` that puts "
        f"its output on disk. Best of {len(q['runs'])} runs.", "",
        "| | wall time | incl. flush to disk | peak RSS |", "|---|---:|---:|---:|",
        f"| `onnxq optimize` (CLI; includes onnx.checker + ORT load of the output) | {q['wall_s']:.1f} s | "
        f"{q['wall_incl_sync_s']:.1f} s | **{q['peak_rss_mib']:.0f} MiB** |",
        f"| ORT offline `ORT_ENABLE_BASIC` (session creation {o['session_s']:.1f} s) | {o['wall_s']:.1f} s | "
        f"{o['wall_incl_sync_s']:.1f} s | {o['peak_rss_mib']:.0f} MiB |",
        f"| ratio onnxq / ORT | {r['ratio']['time_onnxq_over_ort']:.2f}× | "
        f"{r['ratio']['time_incl_sync_onnxq_over_ort']:.2f}× | {r['ratio']['rss_onnxq_over_ort']:.3f}× |",
        "", f"Peak RSS under 1 GiB: **{'yes' if r['under_1_gib'] else 'NO'}**.", "",
    ]
    if "onnxq_phases" in r:
        p = r["onnxq_phases"]
        lines += [f"Phases of the same work through the Python API (instrumented run: peak {p['peak_rss_mib']:.0f} MiB, "
                  f"{p['wall_s']:.1f} s; the kernel high-water mark is reset at each phase):", "",
                  "| phase | seconds | peak RSS MiB | anon / file-backed RSS after, MiB |", "|---|---:|---:|---:|"]
        lines += [f"| {'↳ ' * ph['depth']}{ph['phase']} | {ph['seconds']:.2f} | {ph['peak_rss_mib']} | "
                  f"{ph['rss_anon_mib_after']} / {ph['rss_file_mib_after']} |" for ph in p["phases"]]
        rewrites = ", ".join(f"{x['pass']} {x['rewrites']}" for x in p["passes"])
        lines += ["", f"Rewrites: {rewrites}.", ""]
    unchanged = all(c["inputs_unchanged"].values())
    lines += [
        f"Output check (separate child): input files byte-identical afterwards (sha256): "
        f"{'yes' if unchanged else 'NO'}; the output loads lazily (+{c['load_rss_growth_mib']} MiB RSS, "
        f"initializers external: {'yes' if c['initializers_lazy'] else 'NO'}); ORT on a batch of {c['batch']}: "
        f"max relative error vs the original {c['relative_error']:.2e}. Running both full models in ORT for this "
        f"check peaked at {c['peak_rss_mib']:.0f} MiB ({c['wall_s']:.1f} s) — the cost of *running* the model, "
        "not of optimizing it.", END,
    ]
    return "\n".join(lines) + "\n"


def update_benchmarks_md(path: Path, result: dict) -> None:
    text = path.read_text() if path.exists() else HEADER
    section = render_section(result)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=str(ROOT / ".cache" / "bench-large"))
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--bn-every", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4, help="batch of the numeric spot check")
    parser.add_argument("--passes", help="pipeline text (default: `default`, or the part of it that exists)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each optimizer; best time reported")
    parser.add_argument("--no-phases", dest="phases", action="store_false", help="skip the instrumented run")
    parser.add_argument("--keep", action="store_true", help="keep the multi-GB files in --workdir")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--benchmarks-md", type=Path, help="replace the large-model section of this file")
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child[0], args.child[1:])
        return 0
    result = run_benchmark(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.benchmarks_md:
        update_benchmarks_md(args.benchmarks_md, result)
    summary = {name: {k: v for k, v in result[name].items() if k != "runs"} for name in ("onnxq", "ort_basic")}
    print(json.dumps({**summary, "ratio": result["ratio"], "under_1_gib": result["under_1_gib"]}))
    return 0 if result["under_1_gib"] else 1


if __name__ == "__main__":
    sys.exit(main())
