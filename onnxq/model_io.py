"""Loading and saving models: lazy, checked on the way in, validated and atomic on the way out.

Load: the protobuf is parsed without external data, every safety check runs on it (``onnxq.safety``),
then onnx-ir deserializes it with external tensors left lazy (memory-mapped on first use), so a model
with many GB of weights costs almost no RAM until a pass touches a tensor.

Save: the model is written into a temporary folder beside the destination, with a *fresh* external-data
file when the weights exceed the protobuf limit (or when asked), checked with ``onnx.checker`` and loaded
by ONNX Runtime, and only then renamed into place. A failed or interrupted save leaves nothing behind and
never touches the input or its data files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxq import graph_checks, heap, proto_spill, proto_stream, runtime_compat, safety, session_files
from onnxq.errors import InvalidModelError, OpsetError, OutputPathError, ValidationError
from onnxq.session_files import SessionFiles

logger = logging.getLogger(__name__)

#: Above this many bytes of weights a model is saved with external data (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: External tensors are aligned so ONNX Runtime can memory-map them.
EXTERNAL_DATA_ALIGNMENT = 4096
#: ONNX Runtime implements the default domain from this opset on.
MIN_OPSET = 7


@dataclass
class LoadedModel:
    """A model plus where it came from: the files a save must never overwrite."""

    model: ir.Model
    path: Path
    data_files: list[Path] = field(default_factory=list)


def load_model(path: str | os.PathLike, *, spill: SessionFiles | None = None) -> LoadedModel:
    """Load an ONNX file with every safety and structure check; raise ``OnnxqError`` on bad input.

    ``spill``: a session folder that takes the file's large embedded weights (``SessionFiles.load``): they are
    copied there, not parsed into memory, and the model's tensors refer to them."""
    path = Path(path)
    if not path.exists():
        raise InvalidModelError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise InvalidModelError(f"'{path}' is a directory, not an ONNX model file")
    if path.stat().st_size == 0:
        raise InvalidModelError(f"model file '{path}' is empty")
    proto, spilled, data_path = None, {}, None
    if spill is not None and _is_protobuf(path):
        data_path = spill.new_path("loaded", ".data")
        try:
            proto, spilled = proto_spill.load_spilling(path, data_path, session_files.spillable)
        except ValueError as exc:  # the usual load below says what is wrong, if anything
            logger.debug("reading %s with its weights spilled failed (%s); loading it whole", path, exc)
    if proto is None:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
            raise InvalidModelError(
                f"'{path}' is not an ONNX model (protobuf parse failed: {_first_line(exc)}); truncated or "
                "corrupted?"
            ) from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise InvalidModelError(f"'{path}' holds no ONNX graph (not an ONNX model, or an empty one)")
    if not proto.opset_import:
        raise InvalidModelError(f"'{path}' declares no opset imports")
    _check_opset_and_features(proto, path)
    data_files = safety.check_model_proto(proto, path.parent)
    if spilled:
        # The checker reads the weightless copy (which names the spilled data file beside it), not the input.
        checked = _weightless_twin(proto, spilled, data_path)
        try:
            _check_with_onnx_checker(checked, has_external_data=bool(data_files), shown=path)
        finally:
            checked.unlink(missing_ok=True)
    else:
        _check_with_onnx_checker(path, has_external_data=bool(data_files))
    try:
        with _quiet_serde():
            model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # noqa: BLE001 - onnx-ir raises SerdeError with the cause chained
        cause = exc.__cause__ or exc
        raise InvalidModelError(f"'{path}' is not a valid ONNX graph: {_first_line(cause)}") from None
    del proto
    for graph in (model.graph, *(f.graph for f in model.functions.values())):
        ir.external_data.set_base_dir(graph, path.parent)
    for name in spilled:
        model.graph.initializers[name].const_value.base_dir = data_path.parent
    graph_checks.check_graph_structure(model)
    runtime_compat.normalize_opset_imports(model)
    logger.info("loaded %s (opset %d, IR %d%s)", path, runtime_compat.default_opset(model), model.ir_version,
                f", {len(spilled)} weights spilled to {data_path}" if spilled else "")
    return LoadedModel(model, path, data_files)


def _is_protobuf(path: Path) -> bool:
    found = onnx.serialization.registry.get_format_from_file_extension(path.suffix)
    return (found or "protobuf") == "protobuf"


def _weightless_twin(proto: onnx.ModelProto, spilled: dict[str, proto_spill.SpilledTensor],
                     data: Path) -> Path:
    """``proto`` (as ``load_spilling`` left it) written beside its spilled ``data``, which it names as its
    external data; the path."""
    _point_at(proto, spilled, data.name)
    twin = data.with_suffix(".onnx")
    twin.write_bytes(proto.SerializeToString())
    return twin


def _point_at(proto: onnx.ModelProto, spilled: dict[str, proto_spill.SpilledTensor], location: str) -> None:
    """Mark the spilled initializers as external data at their place in ``location``."""
    for tensor in proto.graph.initializer:
        where = spilled.get(tensor.name)
        if where is None:
            continue
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        entries = (("location", location), ("offset", str(where.offset)), ("length", str(where.length)))
        for key, value in entries:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value


def _check_opset_and_features(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse opsets the installed onnx cannot check or ONNX Runtime cannot run, and unsupported features."""
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            continue
        if opset.version > newest:
            raise OpsetError(
                f"'{path}' uses ai.onnx opset {opset.version}, newer than the installed onnx knows "
                f"(max {newest}); upgrade onnx or export at an older opset"
            )
        if opset.version < MIN_OPSET:
            raise OpsetError(
                f"'{path}' uses ai.onnx opset {opset.version}; ONNX Runtime runs opset {MIN_OPSET} and "
                "newer: export at a newer opset or convert it with onnx.version_converter"
            )
    if proto.graph.sparse_initializer:
        names = ", ".join(repr(s.values.name) for s in proto.graph.sparse_initializer[:3])
        raise InvalidModelError(f"'{path}' has sparse initializers ({names}), which onnxq does not support")


@contextlib.contextmanager
def _quiet_serde() -> Iterator[None]:
    """onnx-ir warns over several lines about dangling inputs; graph_checks reports them in one line."""
    serde_logger = logging.getLogger("onnx_ir.serde")
    level = serde_logger.level
    if not serde_logger.isEnabledFor(logging.DEBUG):
        serde_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        serde_logger.setLevel(level)


def _check_with_onnx_checker(path: Path, *, has_external_data: bool, shown: Path | None = None) -> None:
    """onnx.checker without reading weights: catches duplicate names, bad attributes, unknown ops, and (full
    check, when the weights are in the file) shapes that contradict an op's attributes, which the output's
    validation would refuse anyway. Shape inference cannot read external tensors, so it is skipped then.

    The checker is given the path, not the parsed proto: it parses the file in C++ (with external data it
    resolves locations against the model's folder and reads no tensor bytes). Given the proto, it would
    serialize it first: one more copy of the weights at once (MiniLM, 90 MB: 454 -> 360 MiB peak RSS).
    ``shown``: the path messages name, when ``path`` is a weightless copy of it.
    """
    shown = shown or path
    try:
        onnx.checker.check_model(str(path), full_check=not has_external_data)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        message = _first_line(exc)
        # Third-party exporters often write nodes out of order; we sort them ourselves.
        if "topologically sorted" in message:
            return
        raise InvalidModelError(f"'{shown}' fails onnx.checker: {message}") from None
    except UnicodeDecodeError:  # the checker's message quotes a name that is not UTF-8
        raise InvalidModelError(
            f"'{shown}' fails onnx.checker on a name that is not valid UTF-8 (corrupted file?)"
        ) from None
    except ValueError as exc:  # e.g. "Invalid tensor data type 33." from the C++ checker
        raise InvalidModelError(f"'{shown}' fails onnx.checker: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def weights_nbytes(model: ir.Model) -> int:
    total = 0
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            total += value.const_value.nbytes
    return total


def external_sources(model: ir.Model) -> list[Path]:
    """The external-data files the model's lazy tensors read from."""
    files = set()
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            files.add((Path(tensor.base_dir) / tensor.location).resolve())
    return sorted(files)


def check_output_path(output: Path, protected: list[Path], *, in_place: bool = False) -> None:
    """Refuse destinations that are directories, unwritable, or an input (unless ``in_place``)."""
    if output.exists() and output.is_dir():
        raise OutputPathError(f"output '{output}' is a directory; give a file path ending in .onnx")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.exists():
        raise OutputPathError(f"output folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"output folder '{parent}' is not writable")
    if output.exists() and not os.access(output, os.W_OK):
        raise OutputPathError(f"output '{output}' exists and is not writable")
    if in_place:
        return
    for source in protected:
        if output.exists() and source.exists() and os.path.samefile(output, source):
            raise OutputPathError(
                f"output '{output}' is the input file '{source}'; write elsewhere or pass --in-place"
            )


def save_model(
    model: ir.Model,
    output: str | os.PathLike,
    *,
    protected: list[Path] | None = None,
    external_data: bool | None = None,
    in_place: bool = False,
    validate: bool = True,
    scratch: SessionFiles | None = None,
) -> Path:
    """Validate and write ``model`` to ``output`` atomically; return the final path.

    ``external_data``: True forces a fresh ``<name>.data`` file, False forces embedding, None decides by
    size. ``protected``: files (the input and its data) that must never be overwritten unless ``in_place``.
    ``scratch``: a session folder where validation may copy the weights of an embedded output
    (``validate_model_file``).
    """
    output = Path(output)
    sources = external_sources(model)
    # Files the model still reads lazily must survive the save, whatever the caller says.
    protected = list(protected or []) + sources
    check_output_path(output, protected, in_place=in_place)
    if external_data is None:
        # A model that came with external data keeps it (embedding costs several times the weights in RAM).
        external_data = bool(sources) or weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD
    use_external = external_data
    data_name = output.name + ".data" if use_external else None
    if data_name and not in_place:
        data_target = output.parent / data_name
        for source in protected:
            if data_target.exists() and source.exists() and os.path.samefile(data_target, source):
                raise OutputPathError(
                    f"output data file '{data_target}' would overwrite the input's data '{source}'; "
                    "choose another output name or pass --in-place"
                )
    model.ir_version = runtime_compat.output_ir_version(model)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent or "."))
    except OSError as exc:
        raise OutputPathError(
            f"cannot write into output folder '{output.parent}': {exc.strerror or exc}"
        ) from None
    try:
        staged = staging / output.name
        _write(model, staged, data_name)
        heap.release(collect=False)  # the writer's transient copies, before validation parses the file
        if validate:
            validate_model_file(staged, scratch=scratch)
        if data_name:
            os.replace(staging / data_name, output.parent / data_name)
        os.replace(staged, output)
    except OSError as exc:  # disk full, folder removed or made read-only meanwhile, ...
        raise OutputPathError(f"cannot write '{output}': {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s%s", output, f" (+ {data_name})" if data_name else "")
    return output


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file (a report) through a temporary file in its folder and a rename."""
    try:
        handle, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(staged, path)
    except OSError as exc:
        raise OutputPathError(f"cannot write '{path}': {exc.strerror or exc}") from None


def _write(model: ir.Model, path: Path, data_name: str | None) -> None:
    load_external_attributes(model)
    if data_name:
        ir.save(model, path, external_data=data_name, alignment=EXTERNAL_DATA_ALIGNMENT, align_threshold=0)
        return
    # Embed everything: external tensors (the input's, a session folder's) must not leak into the output as
    # references. The streamed writer embeds the main graph's itself, one at a time.
    if _is_protobuf(path) and not _has_external_initializers(model, subgraphs_only=True):
        try:
            proto_stream.save_streamed(model, path)  # ir.save's bytes, one initializer at a time
            return
        except ValueError as exc:
            logger.debug("streamed write refused (%s); serializing the whole model", exc)
    ir.save(_embedded_view(model), path)


def load_external_attributes(model: ir.Model) -> None:
    """Read tensors of node attributes and function bodies that live in the input's data files into memory.

    Only graph initializers are moved to a fresh data file (or embedded by ``load_to_model``); any other
    external tensor would be written as a reference to the input's file, relative to the wrong folder.
    """
    for graph in (model.graph, *(f.graph for f in model.functions.values())):
        for node in ir.traversal.RecursiveGraphIterator(graph):
            for name, attr in list(node.attributes.items()):
                if not attr.is_ref() and attr.type == ir.AttributeType.TENSOR and isinstance(
                    attr.value, ir.ExternalTensor
                ):
                    (tensor,) = ir.external_data.convert_tensors_from_external([attr.value])
                    node.attributes[name] = ir.AttrTensor(name, tensor)


def _has_external_initializers(model: ir.Model, *, subgraphs_only: bool = False) -> bool:
    graphs = (g for g in model.graphs() if not (subgraphs_only and g is model.graph))
    return any(isinstance(value.const_value, ir.ExternalTensor) for graph in graphs
               for value in graph.initializers.values())


def _embedded_view(model: ir.Model) -> ir.Model:
    if not _has_external_initializers(model):
        return model
    return ir.external_data.load_to_model(model)


def validate_model_file(path: Path, *, scratch: SessionFiles | None = None) -> None:
    """onnx.checker with shape inference (full check) and an ONNX Runtime load, both given the path.

    By path the checker parses the file in C++ and never reads external data, and ORT memory-maps external
    initializers without touching them (prepacking off), so validation costs about the size of the protobuf,
    not of the weights. (``onnx.load`` + check held ~4 copies of them: 916 MiB peak RSS for 196 MiB of
    external weights, now 132 MiB; an output of 1.8-2 GB, saved with external data, used to cost ×4.)

    ``scratch``: for a file with its weights embedded (which both would parse whole: MiniLM's 71 MB output,
    +40 MiB at the peak of a quantize), the file is read back with its large weights copied to this session
    folder (``proto_spill``), and both check that twin: the same graph and the same weight bytes, the
    weights stored beside it instead of inside.
    """
    if scratch is not None and _is_protobuf(path):
        data = scratch.new_path("validated", ".data")
        try:
            proto, spilled = proto_spill.load_spilling(path, data, session_files.spillable)
        except ValueError as exc:  # read it whole below
            logger.debug("reading %s back with its weights spilled failed (%s)", path, exc)
            spilled = {}
        if spilled:
            twin = _weightless_twin(proto, spilled, data)
            del proto
            try:
                validate_model_file(twin)
            finally:
                twin.unlink(missing_ok=True)
                data.unlink(missing_ok=True)
            return
        data.unlink(missing_ok=True)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker and shape inference raise several types
        raise ValidationError(f"the produced model fails onnx.checker, so it was not written: {_first_line(exc)}")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise ValidationError(
            f"ONNX Runtime cannot load the produced model, so it was not written: {_first_line(exc)}"
        ) from None
