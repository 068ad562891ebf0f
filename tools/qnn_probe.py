"""Rebuild the QNN HTP capability tables by compiling one-op QDQ models on the HTP simulator.

    python -m tools.qnn_probe --out backends/qnn/capabilities.json        # every arch, case, precision
    python -m tools.qnn_probe --arch v73 --case conv --case matmul_act    # a subset, summary only
    python -m tools.qnn_probe --check backends/qnn/capabilities.json      # exit 1 on any difference

For every (HTP arch, op case, precision) the case model (``tools.qnn_probe_cases``, built by ``tools.qnn_probe_build``) is compiled for the
arch's SoC with CPU fallback disabled. ``ok`` means the session was created, i.e. every node runs on the
HTP; the result then carries the error against the same model on ORT's CPU EP (graph optimizations off,
so the reference is the QDQ model's exact arithmetic): ``err_lsb`` = max |HTP − CPU| / output scale, for
fp16 ``err_rel`` = max |HTP − CPU| / max |CPU| (with a note where it is fp32-exact, i.e. the fp16 option
had no effect). A quantized model that runs is run again with fallback allowed and the graph-input Q and
graph-output DQ offloaded to the CPU: ``err_lsb_io_cpu`` is that run's error, which shows what leaves the
HTP in another encoding than the model's, and ``override`` quotes the EP where it replaced an output
encoding (16-bit Sigmoid/Tanh/HardSigmoid). A refused result carries the runtime's reason.

Weightless ops are probed at a8w8, a16w8 and fp16 only; a16w16, a8w4 and a16w4 copy the result of the same
activation width and say ``"derived": true``. LPBQ cases (``*_lpbq``, ``*_lpbq_int``) are probed at a8w4 and
a16w4 only; their other precisions are recorded as not applicable (refused, ``"derived": true``).

EPContext check, per arch: the conv model is compiled to an EPContext binary, each time in a fresh process
(the QNN EP numbers tensors per process, so only first compiles compare): with ``soc_model`` (for every
arch), with ``htp_arch`` alone, and with ``soc_model`` plus a different ``htp_arch``. ``soc_matches_arch``
says whether the first two are byte-identical; ``epcontext`` adds the distance (differing 8-byte shingles)
of the ``htp_arch`` binary to each SoC's and the nearest SoC, whether ``soc_model`` wins over ``htp_arch``,
and the compatibility strings ORT records in the EPContext model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make tools/ and onnxq importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.qnn_probe_build import BuiltCase, build_case  # noqa: E402 - after the script-mode path fix
from tools.qnn_probe_cases import (  # noqa: E402
    CASES,
    DERIVED_FROM,
    PRECISIONS,
    PROBED_WEIGHTLESS,
    case_precisions,
)

__all__ = ["ARCHS", "CASES", "PRECISIONS", "build_case", "compare", "differences", "probe", "probe_case"]

#: HTP arch -> the SoC model used to compile for it (``soc_model`` wins over ``htp_arch``).
ARCHS = {"v68": "30", "v69": "36", "v73": "43", "v75": "57", "v79": "69", "v81": "87"}
GENERATED_BY = "python -m tools.qnn_probe --out backends/qnn/capabilities.json"
ERR_TOLERANCE_LSB = 0.5  # --check: larger changes of err_lsb / err_lsb_io_cpu are mismatches
FP32_EXACT = "fp32-exact: the fp16 precision option had no effect"
NOT_APPLICABLE = {"ok": False, "reason": "not applicable: LPBQ is a 4-bit weight format", "derived": True}
_IO_REFUSAL = "QNN EP is configured to not take"  # graph-input Q / output DQ left to the CPU on purpose
_OVERRIDE = re.compile(r"OverrideOutputQuantParam\] (?P<text>.*)")
_VALIDATE = re.compile(r"backendValidateOpConfig\(\) failed for node `(?P<node>[^`]*)` "
                       r"of type `(?P<type>[^`]*)` with error code (?P<code>\d+)")


# ------------------------------------------------------------------------------------------ one probe
def _runtime():
    from onnxq.backends.qnn import runtime

    return runtime


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _qnn_options(soc: str, extra: dict[str, str], *, strict: bool, log_severity: int = 3):
    options = _runtime().session_options(soc, strict=strict, log_severity=log_severity, provider_extra=extra)
    options.intra_op_num_threads = 1
    return options


def refusal_reason(model: bytes, soc: str, extra: dict[str, str], op: str, strict_error: str) -> str:
    """The runtime's words for why the HTP did not take the whole model (verbose placement log)."""
    import onnxruntime as ort

    runtime = _runtime()
    with runtime.captured_stderr() as lines:
        try:
            ort.InferenceSession(model, sess_options=_qnn_options(soc, extra, strict=False, log_severity=0))
        except Exception as error:  # noqa: BLE001 - the runtime raises its own exception types
            strict_error = _first_line(error)
    refused = [(node_op, reason) for node_op, reason in runtime.parse_refusals(lines).values()
               if not reason.startswith(_IO_REFUSAL)]
    refused.sort(key=lambda item: item[0] != op)  # the probed op's own reason first
    if not refused:
        return strict_error[:300]
    node_op, reason = refused[0]
    detail = [f"{m['type']} backendValidateOpConfig error {m['code']}"
              for m in map(_VALIDATE.search, lines) if m]
    text = f"{node_op}: {reason}" + (f" [{detail[0]}]" if detail else "")
    return text[:300]


def _error(built: BuiltCase, got: list[np.ndarray], want: list[np.ndarray], field: str) -> dict:
    diffs = [np.abs(g.astype(np.float64) - w.astype(np.float64)).max() for g, w in zip(got, want)]
    if built.output_scales is None:  # fp16: relative to the output's magnitude
        value = max(diffs) / (max(float(np.abs(w).max()) for w in want) or 1.0)
        if not np.isfinite(value):
            return {field: None, "note": "non-finite output"}
        note = {"note": FP32_EXACT} if value < 1e-5 else {}
        return {field: float(f"{value:.3g}"), **note}
    value = max(d / s for d, s in zip(diffs, built.output_scales))
    if not np.isfinite(value):
        return {field: None, "note": "non-finite output"}
    return {field: round(float(value), 2)}


def _cpu_reference(model: bytes, feeds) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def probe_built(built: BuiltCase, soc: str, op: str) -> dict:
    """Compile ``built`` for ``soc`` with no CPU fallback; run it and compare with ORT's CPU EP.

    A quantized model that runs is run a second time with fallback allowed and
    ``offload_graph_io_quantization=1``, where the EP leaves the graph-input Q and graph-output DQ to the
    CPU: ``err_lsb_io_cpu`` then measures the HTP's integer output against the model's own output encoding,
    and ``override`` quotes the EP when it replaced that encoding (16-bit Sigmoid/Tanh).
    """
    import onnxruntime as ort

    runtime = _runtime()
    model, extra = built.model.SerializeToString(), built.provider_extra
    try:
        with runtime.captured_stderr():
            session = ort.InferenceSession(model, sess_options=_qnn_options(soc, extra, strict=True))
    except Exception as error:  # noqa: BLE001
        return {"ok": False, "reason": refusal_reason(model, soc, extra, op, _first_line(error))}
    try:
        got = session.run(None, built.feeds)
    except Exception as error:  # noqa: BLE001
        return {"ok": False, "reason": f"run failed: {_first_line(error)}"[:300]}
    want = _cpu_reference(model, built.feeds)
    if built.output_scales is None:
        return {"ok": True, **_error(built, got, want, "err_rel")}
    result = {"ok": True, **_error(built, got, want, "err_lsb")}
    extra = {**extra, "offload_graph_io_quantization": "1"}
    with runtime.captured_stderr() as lines:
        options = _qnn_options(soc, extra, strict=False, log_severity=0)
        offloaded = ort.InferenceSession(model, sess_options=options).run(None, built.feeds)
    result.update(_error(built, offloaded, want, "err_lsb_io_cpu"))
    overrides = [m["text"].strip() for m in map(_OVERRIDE.search, lines) if m]
    if overrides:
        result["override"] = overrides[0][:300]
    return result


def probe_case(key: str, precision: str, arch: str) -> dict:
    """Probe one case at one precision on one arch (``v68`` ... ``v81``)."""
    if arch not in ARCHS:
        raise KeyError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return probe_built(build_case(key, precision), ARCHS[arch], CASES[key].op)


def _probe_job(job: tuple[str, str, str]) -> tuple[tuple[str, str, str], dict]:
    arch, key, precision = job
    return job, probe_case(key, precision, arch)


def _precisions(key: str) -> list[str]:
    if CASES[key].lpbq:
        return list(case_precisions(key))
    return list(PRECISIONS) if CASES[key].weighted else list(PROBED_WEIGHTLESS)


# --------------------------------------------------------------------------------------- EPContext
def _compile_context(job: tuple[str | None, str | None]) -> tuple[bytes, str]:
    """(binary, ORT compatibility string) of the conv a8w8 EPContext for (soc_model, htp_arch)."""
    import onnx
    import onnxruntime as ort

    runtime = _runtime()
    soc, arch = job
    model = build_case("conv", "a8w8").model.SerializeToString()
    with tempfile.TemporaryDirectory() as tmp:
        config = {"ep.context_enable": "1", "ep.context_file_path": f"{tmp}/m_ctx.onnx",
                  "ep.context_embed_mode": "0"}
        extra = {"htp_arch": arch} if arch else {}
        if soc:
            options = runtime.session_options(soc, strict=True, config=config, provider_extra=extra)
        else:  # runtime always sets soc_model: build the htp_arch-only options here
            runtime.available()
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            for name, value in config.items():
                options.add_session_config_entry(name, value)
            provider = runtime.provider_options("0", extra)
            del provider["soc_model"]
            devices = [d for d in ort.get_ep_devices() if d.ep_name == runtime.EP_NAME]
            options.add_provider_for_devices(devices, provider)
        with runtime.captured_stderr():
            ort.InferenceSession(model, sess_options=options)
        binaries = sorted(Path(tmp).glob("*.bin"))
        meta = {p.key: p.value for p in onnx.load(f"{tmp}/m_ctx.onnx").metadata_props}
        return binaries[0].read_bytes(), meta.get(f"ep_compatibility_info.{runtime.EP_NAME}", "")


def _shingles(data: bytes) -> set[bytes]:
    return {data[i:i + 8] for i in range(len(data) - 7)}


def check_epcontext(archs: list[str], jobs: int) -> dict[str, dict]:
    """Per arch: soc_matches_arch and the evidence beside it (see the module docstring)."""
    arch_number = {arch: arch[1:] for arch in ARCHS}
    other = {arch: "68" if arch != "v68" else "73" for arch in ARCHS}
    work = [(soc, None) for soc in ARCHS.values()]
    work += [(None, arch_number[a]) for a in archs] + [(ARCHS[a], other[a]) for a in archs]
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        done = dict(zip(work, pool.map(_compile_context, work)))
    soc_shingles = {soc: _shingles(done[(soc, None)][0]) for soc in ARCHS.values()}
    report = {}
    for arch in archs:
        soc_bin, soc_compat = done[(ARCHS[arch], None)]
        arch_bin, arch_compat = done[(None, arch_number[arch])]
        arch_shingles = _shingles(arch_bin)
        distance = {soc: len(shingles ^ arch_shingles) for soc, shingles in soc_shingles.items()}
        report[arch] = {"soc_matches_arch": soc_bin == arch_bin, "epcontext": {
            "nearest_soc_to_htp_arch_binary": min(distance, key=distance.get),
            "htp_arch_binary_distance": distance,
            "soc_wins_over_htp_arch": soc_bin == done[(ARCHS[arch], other[arch])][0],
            "compat_info": {"soc_model": soc_compat, "htp_arch": arch_compat}}}
    return report


# ------------------------------------------------------------------------------------------ the run
def probe(archs: list[str], keys: list[str], jobs: int) -> dict[str, dict[str, dict]]:
    """{arch: {case: {"op", "variant", "results": {precision: result}}}}, derived precisions filled in."""
    work = [(arch, key, p) for key in keys for p in _precisions(key) for arch in archs]
    if jobs <= 1:
        done = [_probe_job(job) for job in work]
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(_probe_job, work, chunksize=4))
    tables = {arch: {key: {"op": CASES[key].op, "variant": CASES[key].variant, "results": {}}
                     for key in keys} for arch in archs}
    for (arch, key, precision), result in done:
        tables[arch][key]["results"][precision] = result
    for arch in archs:
        for key in keys:
            results = tables[arch][key]["results"]
            for precision, source in DERIVED_FROM.items():
                if precision not in results and source in results:
                    results[precision] = {**results[source], "derived": True}
            for precision in PRECISIONS:
                results.setdefault(precision, dict(NOT_APPLICABLE))
    return tables


def differences(where: str, was: dict | None, now: dict) -> list[str]:
    """Why result ``now`` disagrees with ``was`` from the file: ok flipped, or an error moved > tolerance."""
    if was is None:
        return [f"{where}: not in the file"]
    if was["ok"] != now["ok"]:
        why = f" ({now['reason']})" if not now["ok"] else ""
        return [f"{where}: ok {was['ok']} in the file, {now['ok']} now{why}"]
    found = []
    for field in ("err_lsb", "err_lsb_io_cpu"):
        old_err, new_err = was.get(field), now.get(field)
        if old_err is not None and new_err is not None and abs(old_err - new_err) > ERR_TOLERANCE_LSB:
            found.append(f"{where}: {field} {old_err} in the file, {new_err} now")
    return found


def compare(old: dict, new: dict) -> list[str]:
    """Differences between the probed tables ``new`` and a capabilities document ``old``."""
    problems = []
    for arch, cases in new.items():
        old_cases = old.get("archs", {}).get(arch, {}).get("cases", {})
        for key, case in cases.items():
            old_results = old_cases.get(key, {}).get("results", {})
            for precision, result in case["results"].items():
                if not result.get("derived"):
                    problems += differences(f"{arch} {key} {precision}", old_results.get(precision), result)
    return problems


def _mark(result: dict) -> str:
    return "-" if not result["ok"] else "*" if "override" in result else "+"


def summary(tables: dict[str, dict[str, dict]]) -> str:
    """One row per case, one column per arch: a mark per precision."""
    archs = list(tables)
    keys = list(next(iter(tables.values()))) if tables else []
    width = max([len(k) for k in keys] + [4])
    lines = ["precisions: " + " ".join(PRECISIONS)
             + "   (+ runs fully on HTP, * runs but the EP overrode the output encoding, - refused)",
             f"{'case':{width}}  " + "  ".join(f"{a:{len(PRECISIONS)}}" for a in archs)]
    for key in keys:
        cells = ["".join(_mark(tables[a][key]["results"][p]) for p in PRECISIONS) for a in archs]
        lines.append(f"{key:{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def document(tables: dict, epcontext: dict, previous: dict | None) -> dict:
    archs = dict(previous["archs"]) if previous else {}
    for arch, cases in tables.items():
        entry = dict(archs.get(arch, {}), soc_model=ARCHS[arch])
        entry["cases"] = {**entry.get("cases", {}), **cases}
        entry.update(epcontext.get(arch, {}))
        entry.setdefault("soc_matches_arch", None)
        archs[arch] = entry
    return {"schema": 1, "generated_by": GENERATED_BY, "versions": _runtime().versions(),
            "archs": {arch: archs[arch] for arch in ARCHS if arch in archs}}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.qnn_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=list(ARCHS), help="default: all")
    parser.add_argument("--case", action="append", choices=list(CASES), metavar="CASE",
                        help=f"default: all ({', '.join(CASES)})")
    parser.add_argument("--out", type=Path, help="write (or, for a subset, update) this capabilities file")
    parser.add_argument("--check", type=Path, help="re-probe and exit 1 on any difference with this file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--no-epcontext", action="store_true", help="skip the EPContext soc/arch comparison")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    reason = _runtime().available()
    if reason:
        print(f"qnn_probe: cannot probe: {reason}", file=sys.stderr)
        return 2
    archs, keys = args.arch or list(ARCHS), args.case or list(CASES)
    start = time.perf_counter()
    tables = probe(archs, keys, args.jobs)
    epcontext = {} if args.no_epcontext else check_epcontext(archs, args.jobs)
    elapsed = time.perf_counter() - start
    print(summary(tables))
    for arch, entry in epcontext.items():
        print(f"{arch}: soc_matches_arch={entry['soc_matches_arch']} {json.dumps(entry['epcontext'])}")
    print(f"probed {sum(len(c['results']) for t in tables.values() for c in t.values())} results "
          f"in {elapsed:.1f} s with {args.jobs} jobs")
    if args.check:
        old = json.loads(args.check.read_text())
        problems = compare(old, tables)
        problems += [f"{arch}: soc_matches_arch {old['archs'].get(arch, {}).get('soc_matches_arch')} in the "
                     f"file, {entry['soc_matches_arch']} now" for arch, entry in epcontext.items()
                     if old["archs"].get(arch, {}).get("soc_matches_arch") != entry["soc_matches_arch"]]
        print("\n".join(problems) or f"{args.check}: no differences")
        return 1 if problems else 0
    if args.out:
        subset = args.arch or args.case
        previous = json.loads(args.out.read_text()) if subset and args.out.exists() else None
        text = json.dumps(document(tables, epcontext, previous), sort_keys=True, indent=1) + "\n"
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
