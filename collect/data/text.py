"""Plain-text corpora and a word-level tokenizer built locally from the training text.

Corpora:

* :func:`read_text_dir`: every ``*.txt`` file under a directory (recursively, in sorted path
  order), decoded as strict UTF-8. A file that is not UTF-8 text (a NUL byte, an invalid byte
  sequence), or a directory with no text at all, is a :class:`~latent.errors.UserError`
  naming the file.
* :func:`pydoc_topics`: the English help texts that ship with CPython (``pydoc_data.topics``,
  ~65,000 words), joined in sorted topic order — always installed, nothing to fetch.

Tokenizer (:class:`WordTokenizer`): lower-cased words (``[a-z]+``), digit runs and single
punctuation marks (a run of one repeated mark, such as a ``-----`` underline, is one token).
The vocabulary is the five special tokens, then the ``vocab_size − 5`` most frequent tokens of
the text it is built from (ties broken alphabetically), so it is a pure function of the text;
anything else is ``[UNK]``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latent.errors import UserError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))

_TOKEN = re.compile(r"[a-z]+|[0-9]+|([^\sa-z0-9])\1*")


def split_words(text: str) -> list[str]:
    """The token strings of ``text`` (lower-cased; a run of one punctuation mark becomes that mark)."""
    return [m.group(0) if m.group(1) is None else m.group(1) for m in _TOKEN.finditer(text.lower())]


@dataclass(frozen=True)
class WordTokenizer:
    """A word-level vocabulary: ``itos[i]`` is token ``i``; the first five are :data:`SPECIALS`."""

    itos: tuple[str, ...]

    @classmethod
    def build(cls, text: str, vocab_size: int) -> "WordTokenizer":
        """The ``vocab_size − 5`` most frequent tokens of ``text`` after the specials."""
        if vocab_size <= len(SPECIALS):
            raise UserError(f"vocab_size must exceed the {len(SPECIALS)} special tokens, got {vocab_size}")
        counts = Counter(split_words(text))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - len(SPECIALS)]
        return cls(SPECIALS + tuple(w for w, _ in ranked))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64) of ``text``; unknown tokens map to ``[UNK]``."""
        stoi = {w: i for i, w in enumerate(self.itos)}
        return np.array([stoi.get(w, UNK) for w in split_words(text)], dtype=np.int64)

    def decode(self, ids) -> str:
        return " ".join(self.itos[int(i)] for i in ids)


def read_text_file(path: str | os.PathLike) -> str:
    """One UTF-8 text file (a leading byte-order mark is dropped)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read text file {path}: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise UserError(f"text file {path} contains NUL bytes: it is binary, not UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"text file {path} is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None


def read_text_dir(data_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """``(relative path, text)`` of every ``*.txt`` file under ``data_dir``, in sorted path order.

    Raises
    ------
    UserError
        If the directory is missing, holds no ``*.txt`` file, a file is not UTF-8 text, or all
        files are empty.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"text data directory {root} does not exist or is not a directory")
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"no *.txt files under {root}; the mlm task reads plain UTF-8 text files")
    out = [(str(p.relative_to(root)), read_text_file(p)) for p in files]
    if not any(split_words(t) for _, t in out):
        raise UserError(f"the *.txt files under {root} hold no words (all {len(files)} are empty or whitespace)")
    return out


def pydoc_topics() -> str:
    """CPython's bundled help texts (``pydoc_data.topics.topics``), joined in sorted topic order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        raise UserError("this Python has no pydoc_data.topics; pass --data-dir with *.txt files") from None
    return "\n\n".join(topics[k] for k in sorted(topics))

