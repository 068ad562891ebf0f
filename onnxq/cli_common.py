"""Shared plumbing of the CLI: global flags, logging, one-line errors, progress bars, option parsing.

The contract (see README): bad input prints one line on stderr naming the problem and exits 2; no
traceback unless ``--debug``; ``--quiet`` silences everything but errors.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from onnxq.errors import OptionError


@dataclass
class GlobalFlags:
    quiet: bool = False
    debug: bool = False
    verbose: bool = False


FLAGS = GlobalFlags()
stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


def extract_global_flags(argv: list[str]) -> list[str]:
    """Accept --quiet/-q, --debug, --verbose/-v anywhere on the command line."""
    FLAGS.quiet = FLAGS.debug = FLAGS.verbose = False  # main() may run several times in one process
    rest = []
    for arg in argv:
        if arg in ("--quiet", "-q"):
            FLAGS.quiet = True
        elif arg == "--debug":
            FLAGS.debug = True
        elif arg in ("--verbose", "-v"):
            FLAGS.verbose = True
        else:
            rest.append(arg)
    return rest


#: Third-party libraries that are chatty at INFO: kept at WARNING unless debugging.
CHATTY_LOGGERS = ("onnxscript", "onnx_ir")


@contextlib.contextmanager
def logging_configured() -> Iterator[None]:
    """Logging as the global flags ask, for one run of ``main``; then the caller's logging as it was.

    ``main`` also runs inside other programs (pipelines, tools, tests): a ``--quiet`` run left the root
    logger at ERROR and its handlers replaced, so the host's warnings went unseen afterwards."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, root.handlers[:]
    saved_chatty = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    level = logging.DEBUG if FLAGS.debug else logging.INFO if FLAGS.verbose else logging.WARNING
    if FLAGS.quiet:
        level = logging.ERROR
    handler = RichHandler(console=stderr, show_time=False, show_path=FLAGS.debug, rich_tracebacks=FLAGS.debug)
    for old in saved_handlers:
        root.removeHandler(old)
    root.addHandler(handler)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.setLevel(level)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if FLAGS.debug else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for old in saved_handlers:
            root.addHandler(old)
        root.setLevel(saved_level)
        for name, chatty_level in saved_chatty.items():
            logging.getLogger(name).setLevel(chatty_level)


def info(message: str) -> None:
    if not FLAGS.quiet:
        stderr.print(message)


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator:
    """A transient progress bar on stderr; yields a callback(done, total, label)."""
    enabled = not FLAGS.quiet and stderr.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[label]}"),
        TimeElapsedColumn(), console=stderr, transient=True, disable=not enabled,
    )
    with progress:
        task = progress.add_task(description, total=None, label="")

        def update(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, label=label)

        yield update


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``name=1x3x224x224`` (repeatable) -> {"name": (1, 3, 224, 224)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        if not sep or not name:
            raise OptionError(f"--input-shape '{item}' must look like NAME=1x3x224x224")
        try:
            values = tuple(int(d) for d in dims.lower().replace(",", "x").split("x"))
        except ValueError:
            raise OptionError(f"--input-shape '{item}': dims must be integers separated by 'x'") from None
        if any(v <= 0 for v in values):
            raise OptionError(f"--input-shape '{item}': dims must be positive")
        shapes[name] = values
    return shapes


def load_npz_feeds(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz keyed by input name (no pickles are ever loaded)."""
    if not path.is_file():
        raise OptionError(f"data file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad files
        raise OptionError(f"'{path}' is not a readable .npz file: {exc}") from None


def exit_with_error(exc: BaseException, code: int) -> int:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"onnxq: error: {message}", file=sys.stderr)
    return code
