"""Token data for categorical diffusion: text with a character tokenizer, ``.npy`` tokens, digit grids.

Sequences are int64 ``(L,)``; grids are int64 ``(H, W)``. Nothing is downloaded:

* :func:`builtin_text` is the English prose of the Python documentation's topic
  pages that ship with CPython (``pydoc_data.topics``, ~465 k characters), split
  into training and held-out parts;
* :class:`DigitGrids` are scikit-learn's bundled 8x8 handwritten digits quantised
  to ``levels`` grey levels (an ordinal task).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from multigen.domain import DataError, load_npy


class TokenError(DataError):
    """Token data that cannot be used (unknown characters, ids out of range, empty files)."""


class CharTokenizer:
    """Characters <-> ids ``0..len(chars)-1``; ``chars`` is the vocabulary in id order."""

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("tokenizer vocabulary has repeated characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str, source: str = "text") -> Tensor:
        """int64 ``(len(text),)``; characters outside the vocabulary are an error naming them."""
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise TokenError(f"{source} has characters the model's tokenizer does not know: {unknown!r}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids: Tensor, mask_char: str = "_") -> str:
        """Text of integer ``ids``; ids outside the vocabulary (the absorbing mask, negative ones) become
        ``mask_char``."""
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TokenError(f"decode: integer token ids, got {ids.dtype}")
        return "".join(self.chars[i] if 0 <= i < len(self.chars) else mask_char for i in ids.tolist())


def builtin_text(split: str) -> str:
    """English text shipped with Python: the documentation topics in name order; the last
    tenth (cut at a paragraph break) is held out as ``split="val"``."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    cut = text.index("\n\n", int(0.9 * len(text))) + 2
    return text[:cut] if split == "train" else text[cut:]


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path``, line ends read as ``\\n`` and a leading byte-order mark (Windows editors write
    one) dropped: neither becomes a character of the vocabulary."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"text file {path} is a folder; name a UTF-8 text file")
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise TokenError(f"{path} is not UTF-8 text: {e}") from e
    if not text:
        raise TokenError(f"{path} is empty")
    return text


def read_tokens(path: str | Path, vocab_size: int) -> Tensor:
    """A 1-D int ``.npy`` token array ``(N,)``; an id outside ``[0, vocab_size)`` is an error naming its position."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"token file {path} is a folder; name a 1-D .npy token array")
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} not found")
    arr = load_npy(path, TokenError)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.size == 0:
        raise TokenError(f"{path} must hold a non-empty 1-D integer array, not {arr.dtype} {arr.shape}")
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        raise TokenError(f"{path}: token {int(arr[bad[0]])} at position {int(bad[0])} is outside the "
                         f"vocabulary [0, {vocab_size})")
    return torch.from_numpy(arr.astype(np.int64))


class TokenWindows(Dataset):
    """Windows of ``length`` tokens from one long token stream ``(N,)``.

    ``num`` windows start at seeded random offsets (``num=0``: consecutive
    non-overlapping windows, the held-out protocol: every token scored once, but
    a last part shorter than a window, which is left out). ``source`` names the stream in errors.
    """

    def __init__(self, tokens: Tensor, length: int, num: int = 0, seed: int = 0, source: str = "the stream") -> None:
        if len(tokens) < length:
            raise TokenError(f"{source} holds {len(tokens)} tokens, fewer than one window of {length}")
        self.tokens, self.length = tokens, length
        if num:
            g = torch.Generator().manual_seed(seed)
            self.starts = torch.randint(0, len(tokens) - length + 1, (num,), generator=g)
        else:
            self.starts = torch.arange(0, len(tokens) - length + 1, length)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> Tensor:
        s = int(self.starts[i])
        return self.tokens[s : s + self.length]


class DigitGrids(Dataset):
    """scikit-learn's 8x8 digits quantised to ``levels`` grey levels: int64 ``(8, 8)`` in ``[0, levels)``.

    The 1 797 images are split deterministically: every 5th is held out (``split="val"``).
    """

    def __init__(self, levels: int = 8, split: str = "train") -> None:
        from sklearn.datasets import load_digits

        images = torch.from_numpy(load_digits().images)  # (1797, 8, 8) in 0..16
        keep = (torch.arange(len(images)) % 5 == 4) == (split == "val")
        self.grids = torch.round(images[keep] / 16 * (levels - 1)).long()

    def __len__(self) -> int:
        return len(self.grids)

    def __getitem__(self, i: int) -> Tensor:
        return self.grids[i]
