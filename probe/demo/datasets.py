"""Datasets every machine already has, so the demo trains on real data without a download.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes), split once into a
  fixed train / test partition.
* ``digits_lt``: the same train split made long-tailed (class ``c`` keeps ``n_max · IF^(-c/9)`` images,
  imbalance factor IF), with the *balanced* test split kept for evaluation — the setting where InfoBatch's
  per-class pruning ledger is worth looking at.
* ``chars``: character-level text made of the Python standard library's own source files — a fixed,
  sorted list of modules that every CPython ships, read from ``sysconfig.get_paths()["stdlib"]``.

All splits are drawn from an explicit ``torch.Generator`` so two runs of the demo see the same data,
and nothing here touches the global RNG.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import sysconfig
from dataclasses import dataclass

import torch

__all__ = [
    "ImageSplit",
    "TextCorpus",
    "STDLIB_TEXT_FILES",
    "CHAR_VOCAB_SIZE",
    "load_digits_split",
    "long_tail",
    "load_stdlib_text",
]

# Fixed list (sorted) of pure-Python stdlib modules present in every CPython 3.8+; a missing one is skipped,
# so the corpus is identical on every machine with the same Python and close to it across versions.
STDLIB_TEXT_FILES: tuple[str, ...] = tuple(
    sorted(
        [
            "abc.py",
            "argparse.py",
            "ast.py",
            "bisect.py",
            "calendar.py",
            "collections/__init__.py",
            "contextlib.py",
            "copy.py",
            "csv.py",
            "dataclasses.py",
            "difflib.py",
            "enum.py",
            "fractions.py",
            "functools.py",
            "heapq.py",
            "inspect.py",
            "json/decoder.py",
            "json/encoder.py",
            "operator.py",
            "pathlib.py",
            "random.py",
            "shutil.py",
            "string.py",
            "textwrap.py",
            "typing.py",
        ]
    )
)

# Characters are 7-bit ASCII codes; anything else becomes "?" (the stdlib is almost pure ASCII).
CHAR_VOCAB_SIZE = 128
_UNKNOWN_CHAR = ord("?")


@dataclass(frozen=True)
class ImageSplit:
    """Images as float tensors ``(N, 1, 8, 8)`` in [0, 1] and integer labels ``(N,)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def class_counts(self) -> list[int]:
        """Training images per class (the long-tailed variant makes these uneven)."""
        return torch.bincount(self.y_train, minlength=self.num_classes).tolist()


@dataclass(frozen=True)
class TextCorpus:
    """Token ids (``int64``) for training and validation; the vocabulary is 7-bit ASCII."""

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    files: tuple[str, ...]


def load_digits_split(*, test_fraction: float = 0.2, seed: int = 0) -> ImageSplit:
    """Load scikit-learn's bundled digits and split them per class (stratified) with a fixed generator.

    Stratifying keeps the test set balanced, so the long-tailed variant can reuse it and accuracy numbers
    stay comparable between the balanced and the imbalanced runs.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Invalid test_fraction: {test_fraction} (must be in (0, 1))")
    images, labels = _bundled_digits()
    num_classes = int(labels.max().item()) + 1
    generator = torch.Generator().manual_seed(seed)
    train_idx: list[torch.Tensor] = []
    test_idx: list[torch.Tensor] = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        n_test = round(idx.numel() * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    # Interleave classes in a fixed random order so index order carries no label information.
    train = torch.cat(train_idx)
    train = train[torch.randperm(train.numel(), generator=generator)]
    test = torch.cat(test_idx)
    return ImageSplit(images[train], labels[train], images[test], labels[test], num_classes)


def _bundled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled ``digits.csv.gz`` as ``(N, 1, 8, 8)`` floats in [0, 1] and labels.

    Read straight from the file that ``sklearn.datasets.load_digits`` parses, without importing
    scikit-learn: its import (scipy.stats and friends) costs seconds on a busy 2-core machine, more than
    a quick demo run trains. Falls back to ``load_digits`` if the file is not where it used to be.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without executing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = os.path.join(locations[0], "datasets", "data", "digits.csv.gz") if locations else ""
    if path and os.path.isfile(path):
        with gzip.open(path, "rt", encoding="ascii") as fh:
            rows = [[float(v) for v in line.split(",")] for line in fh if line.strip()]
        table = torch.tensor(rows, dtype=torch.float32)
        pixels, labels = table[:, :-1], table[:, -1].to(torch.int64)
    else:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        bunch = load_digits()
        pixels = torch.as_tensor(bunch.data, dtype=torch.float32)
        labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if pixels.shape[1] != 64:
        raise ValueError(f"unexpected digits table shape {tuple(pixels.shape)} (want N x 64)")
    return pixels.view(-1, 1, 8, 8) / 16.0, labels


def long_tail(split: ImageSplit, *, imbalance: float = 10.0) -> ImageSplit:
    """Keep ``n_max · imbalance^(-c/(C-1))`` training images of class ``c`` (the CIFAR-LT recipe).

    The test split is left balanced: a long-tailed benchmark measures how well the rare classes are
    learned, which a test set with the same skew would hide.
    """
    if imbalance < 1.0:
        raise ValueError(f"Invalid imbalance: {imbalance} (must be >= 1)")
    counts = split.class_counts()
    n_max = max(counts)
    keep: list[torch.Tensor] = []
    for c in range(split.num_classes):
        n_keep = max(1, int(n_max * imbalance ** (-c / max(1, split.num_classes - 1))))
        idx = torch.nonzero(split.y_train == c).flatten()[:n_keep]
        keep.append(idx)
    kept = torch.sort(torch.cat(keep)).values  # preserve the split's (already shuffled) order
    return ImageSplit(split.x_train[kept], split.y_train[kept], split.x_test, split.y_test, split.num_classes)


def load_stdlib_text(*, max_chars: int = 400_000, val_fraction: float = 0.1) -> TextCorpus:
    """Concatenate the stdlib files of :data:`STDLIB_TEXT_FILES` (up to ``max_chars``) into a char corpus.

    The last ``val_fraction`` of the text is held out; it comes from different modules than most of the
    training text, so the validation loss measures generalisation rather than memorisation.
    """
    if max_chars < 1000:
        raise ValueError(f"Invalid max_chars: {max_chars} (must be >= 1000)")
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"Invalid val_fraction: {val_fraction} (must be in (0, 0.5))")
    root = sysconfig.get_paths()["stdlib"]
    parts: list[str] = []
    used: list[str] = []
    total = 0
    for name in STDLIB_TEXT_FILES:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        parts.append(text)
        used.append(name)
        total += len(text)
        if total >= max_chars:
            break
    if not parts:
        raise FileNotFoundError(f"none of the demo's stdlib text files exist under {root}")
    text = "\n".join(parts)[:max_chars]
    codes = torch.tensor([c if c < CHAR_VOCAB_SIZE else _UNKNOWN_CHAR for c in map(ord, text)], dtype=torch.int64)
    n_val = int(codes.numel() * val_fraction)
    return TextCorpus(codes[:-n_val], codes[-n_val:], CHAR_VOCAB_SIZE, tuple(used))
