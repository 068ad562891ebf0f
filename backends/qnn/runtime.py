"""The QNN execution provider as onnxruntime-qnn ships it: plugin registration, sessions, placement.

onnxruntime-qnn is a *plugin* EP: its library is registered once per process, then sessions ask for its
devices with provider options (``backend_type=htp``, ``soc_model``). On Linux x86-64 the HTP backend runs
in simulation, so everything here runs the real QNN graph compiler and kernels, only slower.

Placement: ``session.disable_cpu_ep_fallback=1`` makes session creation fail unless every node runs on the
HTP — the test of full offload. Where that fails, ``placement()`` creates a session with fallback allowed
and verbose logging, and reads the EP's own "Validation FAILED ... REASON" lines (captured from fd 2), so
the report names each node the HTP refused and why, in the runtime's words.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from onnxq.errors import OnnxqError

EP_NAME = "QNNExecutionProvider"
_lock = threading.Lock()
_registered = False


class QnnUnavailableError(OnnxqError):
    """onnxruntime-qnn is not installed (or its library does not load) on this machine."""


def available() -> str | None:
    """None when the QNN EP can be used here, else the reason it cannot (for skips and errors)."""
    try:
        _register()
    except QnnUnavailableError as error:
        return str(error)
    return None


def _register():
    global _registered
    with _lock:
        if _registered:
            return
        try:
            import onnxruntime as ort
            import onnxruntime_qnn
        except ImportError as error:
            raise QnnUnavailableError(
                f"the qnn target needs onnxruntime-qnn ({error.name} is not installed): pip install 'onnxq[qnn]'"
            ) from None
        try:
            with captured_output(1), captured_output(2):  # the HTP library greets on stdout when it loads
                ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
        except Exception as error:  # already registered by the user's own code is fine
            if "already registered" not in str(error).lower():
                raise QnnUnavailableError(f"cannot load the QNN execution provider: {error}") from None
        if not [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]:
            raise QnnUnavailableError("onnxruntime-qnn is installed but offers no QNN device")
        _registered = True


def versions() -> dict[str, str]:
    import onnxruntime as ort
    import onnxruntime_qnn

    return {"onnxruntime": ort.__version__, "onnxruntime_qnn": getattr(onnxruntime_qnn, "__version__", "?")}


def provider_options(soc_model: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # offload_graph_io_quantization=1 (the default) hands the graph input Q and output DQ to the CPU EP;
    # 0 keeps them on the HTP, which full offload means. enable_block_quant_weight_optimization=1 turns a
    # blocked int4 weight DequantizeLinear into LPBQ (BLOCKWISE_EXPANSION, c = max block scale / 16, k =
    # round(s_b / c)): exact for onnxq's LPBQ scales, which are k·c with k = 16 somewhere in every channel.
    # Off (the default), the EP runs such Convs/MatMuls in fp16 (BW_FLOAT_BLOCK).
    options = {"backend_type": "htp", "soc_model": str(soc_model), "offload_graph_io_quantization": "0",
               "enable_block_quant_weight_optimization": "1"}
    options.update(extra or {})
    return options


def session_options(soc_model: str, *, strict: bool, log_severity: int = 3,
                    config: Mapping[str, str] | None = None, provider_extra: Mapping[str, str] | None = None):
    """SessionOptions for the HTP of ``soc_model``; ``strict`` refuses any node left to the CPU."""
    import onnxruntime as ort

    _register()
    options = ort.SessionOptions()
    options.log_severity_level = log_severity
    if strict:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    options.add_provider_for_devices(devices, provider_options(soc_model, provider_extra))
    return options


def session(model: bytes | str, soc_model: str, *, strict: bool = True):
    import onnxruntime as ort

    return ort.InferenceSession(model, sess_options=session_options(soc_model, strict=strict))


@contextlib.contextmanager
def captured_output(fd: int) -> Iterator[list[str]]:
    """Capture what native code writes to file descriptor ``fd`` into the yielded list, as lines."""
    lines: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(fd)
        try:
            os.dup2(sink.fileno(), fd)
            yield lines
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture ORT's native logger (fd 2) into the yielded list; what the HTP libraries print on stdout
    (a greeting when they load) is dropped."""
    with captured_output(1), captured_output(2) as lines:
        yield lines


_FAILED = re.compile(r"Validation FAILED for \d+ nodes in OrtNodeUnit \((?P<unit>[^)]*)\)")
_NODE = re.compile(r"Operator type: (?P<op>\S+) Node name: (?P<name>.*?) Node index: \d+")
_REASON = re.compile(r"REASON\s*:\s*(?P<reason>.*)")


@dataclass
class Placement:
    """Which nodes the HTP took: ``refused`` maps node name -> (op type, the runtime's reason)."""

    total_nodes: int
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)
    error: str | None = None  # session creation failed outright (graph finalize error, ...)

    @property
    def full_offload(self) -> bool:
        return not self.refused and self.error is None


def parse_refusals(lines: list[str]) -> dict[str, tuple[str, str]]:
    """Node name -> (op type, reason) from the QNN EP's verbose 'Validation FAILED' log blocks."""
    refused: dict[str, tuple[str, str]] = {}
    current: list[tuple[str, str]] = []
    for line in lines:
        if _FAILED.search(line):
            current = []
            continue
        node = _NODE.search(line)
        if node:
            current.append((node["name"].strip(), node["op"]))
            continue
        reason = _REASON.search(line)
        if reason and current:
            for name, op in current:
                refused.setdefault(name, (op, reason["reason"].strip()))
            current = []
    return refused


def placement(model: bytes | str, soc_model: str, total_nodes: int) -> Placement:
    """Try the strict session first; when it fails, find out which nodes were refused and why."""
    import onnxruntime as ort

    try:
        with captured_stderr():
            ort.InferenceSession(model, sess_options=session_options(soc_model, strict=True))
        return Placement(total_nodes)
    except Exception as strict_error:  # noqa: BLE001 - the runtime raises its own exception types
        first = str(strict_error).splitlines()[0] if str(strict_error) else type(strict_error).__name__
    with captured_stderr() as lines:
        try:
            ort.InferenceSession(model, sess_options=session_options(soc_model, strict=False, log_severity=0))
            error = None
        except Exception as lenient_error:  # noqa: BLE001
            error = str(lenient_error).splitlines()[0]
    refused = parse_refusals(lines)
    if not refused and error is None:
        error = first
    return Placement(total_nodes, refused, error)
