"""Rendered document pages with known layout, for the document-layout and text detectors.

No document scans ship with any package we can install, but a layout model only needs pages that *look*
like documents: a title, paragraphs of real sentences in a real font, a figure with a caption, a ruled table
with a caption, an equation, references, a running header and a page number. We draw them with PIL and
record each element's box and class (the CDLA classes the layout model was trained on) and the ink box of
every line of text drawn (table cells included), so detections can be scored against ground truth.
Fonts: DejaVu (Debian ``fonts-dejavu-core``) when installed, else Pillow's bundled default font; the choice
is recorded, since it changes the pixels.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import textwrap
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: The model's classes, in output order (from the ONNX file's ``character`` metadata).
CDLA_CLASSES = (
    "text",
    "title",
    "figure",
    "figure_caption",
    "table",
    "table_caption",
    "header",
    "footer",
    "reference",
    "equation",
)
_DEJAVU_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
_EQUATIONS = (
    "E = mc² + Σᵢ xᵢ·wᵢ",
    "f(x) = ∫₀^∞ e^(−t²) dt",
    "y = σ(Wx + b),  σ(z) = 1 / (1 + e^(−z))",
    "L = −Σ p(x) log q(x)",
    "‖Ax − b‖² ≤ ε · ‖b‖²",
)


@dataclasses.dataclass
class Page:
    image: np.ndarray  # uint8 RGB [H, W, 3]
    boxes: list[tuple[int, float, float, float, float]]  # (class, x1, y1, x2, y2) in page pixels
    #: ink box (x1, y1, x2, y2) of every drawn line of text, table cells included, for text detectors
    lines: list[tuple[float, float, float, float]] = dataclasses.field(default_factory=list)


def font_source() -> str:
    return "DejaVu" if _dejavu("DejaVuSans.ttf") else "Pillow default"


def _dejavu(name: str) -> Path | None:
    for folder in _DEJAVU_DIRS:
        if (folder / name).is_file():
            return folder / name
    return None


def dejavu_font(size: int, *, bold: bool = False, serif: bool = False, mono: bool = False):
    """DejaVu Sans, Serif or Sans Mono (regular or bold) at ``size`` pixels; else Pillow's default font."""
    from PIL import ImageFont

    family = "SansMono" if mono else "Serif" if serif else "Sans"
    name = f"DejaVu{family}{'-Bold' if bold else ''}.ttf"
    path = _dejavu(name)
    return ImageFont.truetype(str(path), size) if path else ImageFont.load_default(size)


class _Writer:
    """Draws blocks top to bottom in one column and remembers their boxes."""

    def __init__(self, image, left: int, right: int, top: int, bottom: int):
        from PIL import ImageDraw

        self.image, self.draw = image, ImageDraw.Draw(image)
        self.left, self.right, self.y, self.bottom = left, right, top, bottom
        self.boxes: list[tuple[int, float, float, float, float]] = []
        self.lines: list[tuple[float, float, float, float]] = []

    def room(self, height: int) -> bool:
        return self.y + height <= self.bottom

    def text_block(self, text: str, font, cls: str, *, centered: bool = False, gap: int = 18) -> bool:
        chars = max(10, int((self.right - self.left) / (font.size * 0.55)))
        lines = textwrap.wrap(text, chars)
        line_height = int(font.size * 1.35)
        if not lines or not self.room(line_height * len(lines)):
            return False
        x0, x1 = self.right, self.left
        for i, line in enumerate(lines):
            width = self.draw.textlength(line, font=font)
            x = self.left + (self.right - self.left - width) / 2 if centered else self.left
            self._text((x, self.y + i * line_height), line, font, (20, 20, 20))
            x0, x1 = min(x0, x), max(x1, x + width)
        self._record(cls, x0, self.y, x1, self.y + line_height * len(lines) - int(font.size * 0.3))
        self.y += line_height * len(lines) + gap
        return True

    def picture(self, photo: np.ndarray, caption: str, font) -> bool:
        from PIL import Image

        width = int((self.right - self.left) * 0.5)
        height = int(width * photo.shape[0] / photo.shape[1])
        if not self.room(height + 3 * font.size):
            return False
        x = self.left + (self.right - self.left - width) // 2
        self.image.paste(
            Image.fromarray(photo).resize((width, height), Image.Resampling.BILINEAR), (x, self.y)
        )
        self._record("figure", x, self.y, x + width, self.y + height)
        self.y += height + 10
        return self.text_block(caption, font, "figure_caption", centered=True)

    def table(self, rng: np.random.Generator, caption: str, caption_font, font) -> bool:
        rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 6))
        row_height = int(font.size * 1.6)
        if not self.room(rows * row_height + 3 * caption_font.size):
            return False
        self.text_block(caption, caption_font, "table_caption", centered=True, gap=8)
        width = self.right - self.left
        top = self.y
        for r in range(rows + 1):
            self.draw.line(
                (self.left, top + r * row_height, self.right, top + r * row_height), fill=(0, 0, 0), width=2
            )
        for c in range(cols + 1):
            x = self.left + c * width // cols
            self.draw.line((x, top, x, top + rows * row_height), fill=(0, 0, 0), width=2)
        for r in range(rows):
            for c in range(cols):
                cell = f"{rng.uniform(0, 1000):.1f}" if r else f"col {c + 1}"
                x, y = self.left + c * width // cols + 8, top + r * row_height + 4
                self._text((x, y), cell, font, (0, 0, 0))
        self._record("table", self.left, top, self.right, top + rows * row_height)
        self.y = top + rows * row_height + 20
        return True

    def _text(self, xy: tuple[float, float], text: str, font, fill: tuple[int, int, int]) -> None:
        self.draw.text(xy, text, font=font, fill=fill)
        self.lines.append(tuple(float(v) for v in self.draw.textbbox(xy, text, font=font)))

    def _record(self, cls: str, x0: float, y0: float, x1: float, y1: float) -> None:
        self.boxes.append((CDLA_CLASSES.index(cls), float(x0), float(y0), float(x1), float(y1)))


def render_page(
    sentences: list[str], photo: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = (1216, 1600)
) -> Page:
    """One page (width, height = ``size``) from ``sentences`` (consumed in order) and a photo."""
    from PIL import Image

    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    margin = int(width * 0.08)
    body = dejavu_font(int(rng.integers(20, 26)), serif=bool(rng.integers(2)))
    small = dejavu_font(18)
    words = itertools.cycle(sentences)  # a short list repeats rather than failing
    writer = _Writer(image, margin, width - margin, margin // 2, height - margin)
    writer.text_block(f"Proceedings of the {rng.integers(1, 40)}th Workshop on Systems", small, "header")
    writer.y += 20
    title = " ".join(next(words).rstrip(".").split()[: int(rng.integers(3, 8))])
    title_font = dejavu_font(int(rng.integers(34, 44)), bold=True)
    writer.text_block(title, title_font, "title", centered=True, gap=30)
    order = ["text", "figure", "text", "table", "text", "equation", "text", "reference"]
    if rng.random() < 0.5:
        order[1], order[3] = order[3], order[1]
    for kind in order:
        if kind == "text":
            paragraph = " ".join(next(words) for _ in range(int(rng.integers(2, 5))))
            writer.text_block(paragraph, body, "text")
        elif kind == "figure":
            writer.picture(photo, f"Figure {rng.integers(1, 9)}: {next(words)}", small)
        elif kind == "table":
            writer.table(rng, f"Table {rng.integers(1, 9)}: {next(words)}", small, small)
        elif kind == "equation":
            writer.text_block(
                _EQUATIONS[int(rng.integers(len(_EQUATIONS)))],
                dejavu_font(26, serif=True),
                "equation",
                centered=True,
            )
        else:
            for index in range(int(rng.integers(2, 4))):
                writer.text_block(f"[{index + 1}] {next(words)}", small, "reference", gap=6)
    footer = _Writer(image, margin, width - margin, height - margin + 20, height)
    footer.text_block(str(rng.integers(1, 300)), small, "footer", centered=True)
    return Page(np.asarray(image), writer.boxes + footer.boxes, writer.lines + footer.lines)


def layout_input(page: Page, input_size: tuple[int, int] = (608, 800)) -> tuple[np.ndarray, np.ndarray]:
    """rapid-layout's preprocessing: resize to 608x800, BGR, (x/255 - mean)/std, CHW; boxes scaled too."""
    from PIL import Image

    height, width = page.image.shape[:2]
    resized = np.asarray(Image.fromarray(page.image).resize(input_size, Image.Resampling.BILINEAR))
    bgr = resized[:, :, ::-1].astype(np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    chw = ((bgr - mean) / std).transpose(2, 0, 1).astype(np.float32)
    sx, sy = input_size[0] / width, input_size[1] / height
    boxes = np.array(
        [(c, x0 * sx, y0 * sy, x1 * sx, y1 * sy) for c, x0, y0, x1, y1 in page.boxes], np.float32
    )
    return chw, boxes.reshape(-1, 5)
