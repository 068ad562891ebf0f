"""ppocr_rec: PaddleOCR's PP-OCRv4 mobile text recognizer (SVTR-LCNet, CTC) from the rapidocr-onnxruntime
wheel, as is.

Why it exists: a real third-party sequence model with attention. paddle2onnx wrote it (opset 12, IR 8, no
producer name): a PP-LCNet convolutional front end, then SVTR mixing blocks whose attention is MatMul +
Softmax and whose LayerNorms are spelled out (ReduceMean, Sub, Pow, Sqrt, Div), hard-swish as Mul/Clip/Div,
~420 Constant nodes, Shape/Cast/Slice arithmetic for the dynamic width, six BatchNormalization nodes left
unfolded, and a per-step softmax over 6625 classes.

File: ``rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx`` in rapidocr-onnxruntime 1.4.4
(``models.ppocr``). Input ``x`` [N, 3, 48, W] (batch and width dynamic, height unnamed but 48), BGR,
``(x / 255 - 0.5) / 0.5``. Output ``softmax_11.tmp_0`` [N, W / 8, 6625]: per time step, probabilities of
CTC blank (index 0), the 6623 characters of the file's ``character`` metadata, and space (last), the table
rapidocr's ``CTCLabelDecode`` builds.

Preprocessing follows rapidocr's ``resize_norm_img``: resize to height 48 keeping the aspect ratio
(squeezed to the bucket width if wider), normalise, pad on the right with zeros up to the bucket width.
rapidocr's smallest bucket, 320 (its ``rec_img_shape``), is the one width used here: 40 CTC steps.

Data: single lines of text rendered with DejaVu Sans, Serif or Sans Mono (regular or bold, 26-43 px, dark
ink on light paper, a few pixels of margin, like detector crops): 1-4 words from Python's docstrings
(``models.datasets.text``, disjoint sentences for the two sets), or, one line in four, a number, date,
price, time or version string. 64 calibration lines and 64 evaluation lines; the eval file's ``label`` is
the rendered text of each line (a unicode string array).

Metric (``score``): greedy CTC decoding (argmax per step, repeats collapsed, blanks dropped) of FP32 and of
the candidate; ``lines_identical`` is the share of lines whose decoded index sequences are equal. No
character table is needed for it. The build also decodes FP32 to text with the file's own table and
reports its character accuracy against the rendered strings (1 - edit distance / length, over all lines).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from models.datasets.documents import dejavu_font, font_source
from models.datasets.text import split_sentences
from models.ppocr import RECOGNIZER, install_model, normalize, per_image
from models.registry import BuildContext, BuiltModel

logger = logging.getLogger(__name__)

CALIB_LINES, EVAL_LINES = 64, 64
HEIGHT, WIDTH = 48, 320  # rapidocr's rec_img_shape [3, 48, 320]
MAX_WORDS, MAX_CHARS = 4, 22
NUMBER_EVERY = 4  # every 4th line is a number, date, price...
BATCH = 16


def characters(model_path: str | Path) -> list[str]:
    """Class index -> character: blank, the ``character`` metadata lines, space (rapidocr's table)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if "character" not in metadata:
        raise ValueError(f"{model_path} has no 'character' metadata")
    return ["blank", *metadata["character"].splitlines(), " "]


def _number(rng: np.random.Generator) -> str:
    kind = int(rng.integers(6))
    if kind == 0:
        return f"{rng.integers(1990, 2030)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
    if kind == 1:
        return f"${int(rng.integers(1, 100_000)):,}.{rng.integers(100):02d}"
    if kind == 2:
        return f"{rng.uniform(0, 1000):.{int(rng.integers(1, 5))}f}"
    if kind == 3:
        return f"{rng.integers(24):02d}:{rng.integers(60):02d}"
    if kind == 4:
        return f"+{rng.integers(1, 99)} {rng.integers(100, 999)} {rng.integers(1000, 9999)}"
    return f"v{rng.integers(10)}.{rng.integers(30)}.{rng.integers(10)}"


def _words(sentence: str, rng: np.random.Generator) -> list[str]:
    words = sentence.split()
    count = min(int(rng.integers(1, MAX_WORDS + 1)), len(words))
    start = int(rng.integers(0, len(words) - count + 1))
    chosen = words[start : start + count]
    while len(chosen) > 1 and len(" ".join(chosen)) > MAX_CHARS:
        chosen.pop()
    return chosen


def _render(text: str, font, ink: tuple[int, ...], paper: tuple[int, ...], margin: tuple[int, int]):
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    _, cap_top, _, descender = font.getbbox("Hg")  # frame the line's height, not just this text's ink
    top, bottom = min(top, cap_top), max(bottom, descender)
    mx, my = margin
    image = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), paper)
    ImageDraw.Draw(image).text((mx - left, my - top), text, font=font, fill=ink)
    return np.asarray(image)


def render_line(words: list[str], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One line of text as an RGB crop; trailing words are dropped until it fits the bucket at height 48."""
    family = int(rng.integers(3))
    size, bold = int(rng.integers(26, 44)), bool(rng.random() < 0.3)
    font = dejavu_font(size, bold=bold, serif=family == 1, mono=family == 2)
    ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
    paper = tuple(int(v) for v in rng.integers(200, 256, size=3))
    margin = (int(rng.integers(2, 10)), int(rng.integers(2, 8)))
    words = list(words)
    while True:
        text = " ".join(words)
        image = _render(text, font, ink, paper, margin)
        if len(words) == 1 or math.ceil(HEIGHT * image.shape[1] / image.shape[0]) <= WIDTH:
            return image, text
        words.pop()


def recognizer_input(line: np.ndarray) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` at bucket width ``WIDTH``: [3, 48, WIDTH] float32, zero padded."""
    from PIL import Image

    height, width = line.shape[:2]
    resized_width = min(WIDTH, math.ceil(HEIGHT * width / height))
    resized = Image.fromarray(line).resize((resized_width, HEIGHT), Image.Resampling.BILINEAR)
    padded = np.zeros((3, HEIGHT, WIDTH), dtype=np.float32)
    padded[:, :, :resized_width] = normalize(np.asarray(resized))
    return padded


def _lines(sentences: list[str], count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    inputs, texts = [], []
    for index in range(count):
        words = [_number(rng)] if index % NUMBER_EVERY == NUMBER_EVERY - 1 else _words(sentences[index], rng)
        line, text = render_line(words, rng)
        inputs.append(recognizer_input(line))
        texts.append(text)
    return np.stack(inputs), texts


def greedy_indices(probabilities: np.ndarray) -> np.ndarray:
    """Greedy CTC decoding of one line [steps, classes]: argmax per step, collapse repeats, drop blank (0)."""
    best = np.asarray(probabilities).argmax(axis=-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return best[keep & (best != 0)]


def decode(outputs: Iterable[Any], table: list[str]) -> list[str]:
    """Texts of all lines in ``outputs`` (stacked array or per-run outputs), with the class table."""
    return ["".join(table[i] for i in greedy_indices(line)) for line in per_image(outputs)]


def score(reference_outputs: Iterable[Any], candidate_outputs: Iterable[Any]) -> dict[str, float]:
    """``lines_identical``: share of lines whose greedy CTC decodings of FP32 and candidate are equal."""
    same = [
        np.array_equal(greedy_indices(reference), greedy_indices(candidate))
        for reference, candidate in zip(
            per_image(reference_outputs), per_image(candidate_outputs), strict=True
        )
    ]
    if not same:
        raise ValueError("score: no outputs")
    return {"lines_identical": float(np.mean(same))}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            substitution = previous[j - 1] + (char_a != char_b)
            current.append(min(previous[j] + 1, current[j - 1] + 1, substitution))
        previous = current
    return previous[-1]


def char_accuracy(texts: list[str], labels: Iterable[str]) -> float:
    """1 - total edit distance / total label length, over all lines."""
    labels = [str(label) for label in labels]
    errors = sum(edit_distance(text, label) for text, label in zip(texts, labels, strict=True))
    return 1.0 - errors / max(sum(len(label) for label in labels), 1)


def build(context: BuildContext) -> BuiltModel:
    import onnxruntime as ort

    install_model(RECOGNIZER, context)
    parts = split_sentences({"calib": CALIB_LINES, "eval": EVAL_LINES}, seed=context.seed)
    calib, _ = _lines(parts["calib"], CALIB_LINES, context.seed)
    evaluation, texts = _lines(parts["eval"], EVAL_LINES, context.seed + 1)
    session = ort.InferenceSession(str(context.onnx_path), providers=["CPUExecutionProvider"])
    outputs = [session.run(None, {"x": evaluation[i : i + BATCH]}) for i in range(0, EVAL_LINES, BATCH)]
    table = characters(context.onnx_path)
    decoded = decode(outputs, table)
    mismatches = [(got, want) for got, want in zip(decoded, texts, strict=True) if got != want]
    if mismatches:
        logger.info("ppocr_rec: FP32 misreads %d lines, e.g. %s", len(mismatches), mismatches[:5])
    return BuiltModel(
        calib={"x": calib},
        eval_inputs={"x": evaluation},
        labels=np.array(texts, dtype=str),
        batch_axes={"x": 0},
        exporter="paddle2onnx (third-party file, used as shipped)",
        source=RECOGNIZER.describe()
        | {
            "architecture": "PP-OCRv4 mobile text recognizer (PP-LCNet + SVTR, CTC), Chinese + English",
            "data": f"rendered text lines ({font_source()} fonts, stdlib docstrings, numbers)",
            "preprocessing": f"height {HEIGHT}, aspect kept, zero-padded to {WIDTH}; BGR, (x/255 - 0.5)/0.5",
            "classes": len(table),
        },
        metrics={
            "fp32_char_accuracy": round(char_accuracy(decoded, texts), 4),
            "fp32_lines_exact": round(float(np.mean([got == want for got, want in zip(decoded, texts)])), 4),
            "eval_chars_per_line": round(float(np.mean([len(text) for text in texts])), 2),
        },
        notes=[
            f"a sample is one line [3, {HEIGHT}, {WIDTH}]; any batch size works",
            "label: the rendered text of each line (unicode strings)",
            "task metric: lines_identical, share of lines whose greedy CTC decodings of FP32 and candidate "
            "are equal (models.ppocr_rec.score(reference_outputs, candidate_outputs))",
            f"class table: blank, the file's 'character' metadata ({len(table) - 2} entries), space",
        ],
    )
