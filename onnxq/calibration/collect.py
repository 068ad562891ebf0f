"""One streamed pass over the calibration data, reducing every observed tensor as it comes.

The requested intermediate tensors are exposed as outputs of a *serialized copy* of the model (the caller's
model is never modified; its weights go to a private folder as external data, which ORT memory-maps instead
of copying: ``onnxq.session_files``), cut into consecutive segments (``onnxq.calibration.segments``), each
run in an ONNX Runtime CPU session with graph optimizations off (so every tensor name survives) and no
memory arena, one intra-op thread per available core (at most ``MAX_THREADS``), sample by sample. Each
output is folded into its observers at once and dropped, so memory is ``O(tensors × bins)`` plus one
segment's activations, whatever the number of samples (freed activations left in the C heap are returned to
the system when a sample leaves much of them: ``heap.TrimWhenGrown``).
Tensors that are graph inputs are observed from the samples themselves; initializers are observed once.

For histogram methods one pass suffices: the power-of-two histogram (``observers.HistogramObserver``)
widens its bins exactly as data arrives, so no min/max pass is needed first. Per-channel tensors
(``per_channel_axes``) keep per-channel min/max only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxq import heap, runtime_compat
from onnxq.calibration import segments
from onnxq.calibration.data import CalibrationData
from onnxq.calibration.observers import ChannelMeanObserver, HistogramObserver, MinMaxObserver
from onnxq.calibration.ranges import HISTOGRAM_METHODS, METHODS, TensorStats
from onnxq.calibration.segments import SegmentedRun
from onnxq.errors import OptionError, UnknownNameError
from onnxq.session_files import SessionFiles

logger = logging.getLogger(__name__)

#: Most intra-op threads the calibration session uses (more rarely helps one-sample runs).
MAX_THREADS = 16
#: A sample that leaves this much freed activation memory in the C heap gets it trimmed (``heap.TrimWhenGrown``).
TRIM_GROWN_MIB = 32

Progress = Callable[[int, "int | None"], None]


class _TensorObservers:
    """The observers of one tensor, chosen by method and granularity."""

    def __init__(self, method: str, axis: int | None, moving_average: float | None, num_bins: int,
                 mean_axis: int | None = None):
        self.axis = axis
        use_histogram = method in HISTOGRAM_METHODS and axis is None
        self.histogram = HistogramObserver(num_bins) if use_histogram else None
        averaging = moving_average if method == "minmax" else None
        self.minmax = None if use_histogram else MinMaxObserver(axis, averaging)
        self.mean = None if mean_axis is None else ChannelMeanObserver(mean_axis)

    def update(self, array: np.ndarray) -> None:
        if self.histogram is not None:
            self.histogram.update(array)
        if self.minmax is not None:
            self.minmax.update(array)
        if self.mean is not None:
            self.mean.update(array)

    def stats(self, name: str) -> TensorStats:
        source = self.histogram if self.histogram is not None else self.minmax
        if source.nonfinite:
            logger.info("tensor '%s': %d NaN/Inf/sentinel (|x| >= 1e30) values were left out of its range",
                        name, source.nonfinite)
        return TensorStats(name, source.min, source.max, self.histogram, self.axis,
                           source.count, source.nonfinite, None if self.mean is None else self.mean.mean)


def _classify(model: ir.Model, names: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    """Split names into (graph inputs, initializers with their values, node outputs)."""
    graph = model.graph
    inputs = {v.name for v in graph.inputs}
    produced = {v.name for node in graph for v in node.outputs}
    from_samples, constants, exposed = [], {}, []
    for name in names:
        initializer = graph.initializers.get(name)
        if initializer is not None and initializer.const_value is not None:
            constants[name] = initializer.const_value.numpy()
        elif name in inputs:
            from_samples.append(name)
        elif name in produced:
            exposed.append(name)
        else:
            raise OptionError(
                f"cannot calibrate tensor '{name}': the model's main graph has no input, initializer or node "
                "output of that name (tensors inside If/Loop bodies cannot be observed)"
            )
    return from_samples, constants, exposed


def _external_data_dir(model: ir.Model) -> str | None:
    """Folder of the model's external weights (they stay on disk: ORT reads them from there)."""
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            return str(value.const_value.base_dir)
    return None


def make_calibration_session(model: ir.Model, names: Sequence[str], files: SessionFiles | None = None) -> SegmentedRun:
    """CPU sessions over consecutive segments of ``model`` observing ``names`` (``segments``): optimizations
    off, so every name survives.

    The weights reach ORT as external data in ``files`` (a private folder if None), which it maps instead
    of copying (``onnxq.session_files``). The memory arena is off: a run's outputs are handed to numpy and
    dropped, so a pool sized for all of them at once would only hold memory between samples. The sessions
    run one after the other, so an idle one's threads must not spin on the cores the next one needs.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with contextlib.ExitStack() as stack:
        files = files or stack.enter_context(SessionFiles())
        view = files.external_view(model)
        folder = _external_data_dir(view)
        if folder:
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
        proto = ir.to_proto(view)
        del view
        proto.ir_version = min(proto.ir_version, runtime_compat.target_ir_version())

        def make(data: bytes):
            return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

        try:
            return SegmentedRun(segments.split(proto, names), make)
        except Exception as error:  # noqa: BLE001 - ORT's own exception types; the whole model is the arbiter
            logger.info("a calibration segment did not load (%s); one session over the whole model",
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
            return SegmentedRun(segments.split(proto, names, per_segment=None), make)


def _threads() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    return max(1, min(available, MAX_THREADS))


def _observe_outputs(outputs: list[np.ndarray], names: Sequence[str], observers: Mapping) -> None:
    """Fold one run's outputs into their observers, smallest first, each dropped once folded: the large
    tensors' observer temporaries then stack on few other outputs, not on all of them (efficientnet_lite0:
    35 MiB of outputs per sample). Observers are independent: order is free."""
    for index in sorted(range(len(outputs)), key=lambda i: getattr(outputs[i], "nbytes", 0)):
        observers[names[index]].update(outputs[index])
        outputs[index] = None


def collect_statistics(
    model: ir.Model,
    tensor_names: Sequence[str],
    data: Iterable[dict],
    *,
    method: str = "minmax",
    per_channel_axes: Mapping[str, int] | None = None,
    moving_average: float | None = None,
    num_bins: int = 2048,
    progress: Progress | None = None,
    session_files: SessionFiles | None = None,
    channel_means: Mapping[str, int] | None = None,
) -> dict[str, TensorStats]:
    """Statistics of ``tensor_names`` over ``data`` (a ``CalibrationData`` or any source it accepts).

    ``method`` decides what is kept: min/max for "minmax" (a moving average with ``moving_average``),
    a histogram of ``num_bins`` bins per side of zero for the others. ``progress(done, total)`` is called
    after each sample (``total`` None when unknown). ``session_files``: where the session's model is
    written (one that already holds the model's weights saves writing them again). ``channel_means``
    (name → axis): tensors whose per-channel mean is also kept (``TensorStats.channel_mean``).
    """
    if method not in METHODS:
        raise UnknownNameError("calibration method", method, METHODS)
    if moving_average is not None and method != "minmax":
        logger.debug("moving_average applies to method 'minmax' only; ignored for '%s'", method)
    means = dict(channel_means or {})
    names = list(dict.fromkeys([*tensor_names, *means]))
    axes = dict(per_channel_axes or {})
    from_samples, constants, exposed = _classify(model, names)
    observers = {n: _TensorObservers(method, axes.get(n), moving_average, num_bins, means.get(n)) for n in names}
    for name, value in constants.items():
        observers[name].update(value)
    if not isinstance(data, CalibrationData):
        data = CalibrationData.from_source(data, model)
    session = None
    if exposed:
        session = make_calibration_session(model, exposed, session_files)
    total = data.num_samples
    logger.info("calibrating %d tensors (%s) over %s samples", len(names), method, total or "all")
    done = 0
    trim = heap.TrimWhenGrown(TRIM_GROWN_MIB)
    for sample in data:
        for name in from_samples:
            if name in sample:
                observers[name].update(sample[name])
        if session is not None:
            session.run(sample, lambda outputs, names: _observe_outputs(outputs, names, observers))
            trim()
        done += 1
        if progress is not None:
            progress(done, total if total is not None else data.num_samples)
    return {name: observers[name].stats(name) for name in names}
