"""Real English sentences found offline: the docstrings of Python's standard library and the Zen of Python.

Every machine with Python has them, they are written by people (not generated), and they cover the
vocabulary a sentence encoder sees in technical text. Docstrings are read from the modules' source files,
so the corpus depends only on the Python version (which the build record notes), not on what a process
imported or patched before. Sentences are filtered to plain prose (6-40 words, almost only letters and
punctuation, no doctest lines), de-duplicated, then shuffled with a fixed seed and split into disjoint parts.
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import importlib
import importlib.util
import io
import logging
import re
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Standard-library modules (pure Python, so their source is on disk) whose docstrings form the corpus.
_MODULES = (
    "textwrap json argparse logging unittest collections functools pathlib subprocess threading asyncio "
    "email zipfile tarfile csv sqlite3 statistics fractions decimal random difflib heapq bisect string "
    "calendar shutil tempfile pickle socket ssl http.client urllib.request xml.dom.minidom datetime enum "
    "dataclasses typing contextlib queue sched selectors signal struct locale gettext hashlib hmac secrets "
    "uuid base64 gzip bz2 lzma operator pprint reprlib weakref copy inspect ast dis tokenize traceback "
    "warnings pdb timeit trace doctest"
).split()

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,.'-;:()!?")


def zen_of_python() -> list[str]:
    """The Zen of Python as lines (``this`` prints it on import and stores it ROT13-encoded)."""
    with contextlib.redirect_stdout(io.StringIO()):
        this = importlib.import_module("this")
    text = codecs.decode(this.s, "rot13")
    return [line.strip() for line in text.splitlines()[2:] if line.strip()]


def _docstrings(module_name: str) -> list[str]:
    """Docstrings of a module's source, read with ``ast``: the module's, then every public top-level class
    and function's, and their public methods', in source order.

    Reading source rather than live objects matters: libraries monkeypatch the standard library (one
    replaces ``inspect.getsourcefile``), so live docstrings depend on what a process imported before.
    """
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        logger.warning("corpus: no Python source for %s", module_name)  # the corpus shrinks, and says so
        return []
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    docs = [ast.get_docstring(tree) or ""]
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in tree.body:
        if isinstance(node, definitions) and not node.name.startswith("_"):
            docs.append(ast.get_docstring(node) or "")
            if isinstance(node, ast.ClassDef):
                docs.extend(
                    ast.get_docstring(member) or ""
                    for member in node.body
                    if isinstance(member, definitions) and not member.name.startswith("_")
                )
    return docs


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not 6 <= len(words) <= 40 or sentence[-1] not in ".!?" or ">>>" in sentence:
        return False
    return sum(ch in _PROSE_CHARS for ch in sentence) / len(sentence) > 0.95


def sentences() -> list[str]:
    """All corpus sentences, de-duplicated, in a fixed order."""
    found = list(zen_of_python())
    for module_name in _MODULES:
        for doc in _docstrings(module_name):
            text = re.sub(r"\s+", " ", doc).strip()
            found.extend(s for s in _SENTENCE_END.split(text) if s and _is_prose(s))
    unique = list(dict.fromkeys(found))
    logger.debug("corpus: %d sentences from Python %s docstrings", len(unique), sys.version.split()[0])
    return unique


def split_sentences(parts: dict[str, int | None], seed: int = 0) -> dict[str, list[str]]:
    """Shuffle the corpus with ``seed`` and cut it into disjoint named parts of the given sizes.

    A size of None takes everything left over (at most one part may say so).
    """
    corpus = sentences()
    order = np.random.default_rng(seed).permutation(len(corpus))
    shuffled = [corpus[i] for i in order]
    fixed = sum(size for size in parts.values() if size is not None)
    if fixed > len(corpus):
        raise ValueError(f"asked for {fixed} sentences, the corpus has {len(corpus)}")
    if sum(size is None for size in parts.values()) > 1:
        raise ValueError("at most one part may take the rest of the corpus")
    result, start = {}, 0
    for name, size in parts.items():
        stop = start + (len(corpus) - fixed if size is None else size)
        result[name] = shuffled[start:stop]
        start = stop
    return result
