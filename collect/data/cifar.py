"""CIFAR-10/100 python-pickle batches (read safely) and a generated CIFAR-style image set.

Real files. The "python version" archives unpack to

* CIFAR-10 (``cifar-10-batches-py/``): ``data_batch_1`` … ``data_batch_5`` (training) and
  ``test_batch``, each a pickled dict with ``b"data"`` (uint8, N×3072: 1024 red, 1024 green,
  1024 blue values of a 32×32 image, row-major) and ``b"labels"`` (N ints 0–9);
* CIFAR-100 (``cifar-100-python/``): ``train`` and ``test`` with ``b"data"`` and
  ``b"fine_labels"`` (0–99; ``b"coarse_labels"`` is ignored).

The files are pickles, so they are read with :class:`RestrictedUnpickler`, which refuses every
global except the few that rebuild a numpy array (and ``_codecs.encode``, which protocol-2
pickles use for bytes, and ``bytes`` itself). A missing, truncated, corrupt or wrong-shaped file is a
:class:`~latent.errors.UserError` naming the file and the problem. Nothing here writes a pickle
except :func:`write_cifar_batch`, which exists for tests and for users who want to make a
small batch in the real format.

Generated set (:func:`generate_images`): 32×32 RGB images of 10 classes, each class a shape
(disk, square, triangle, ring, cross) × a fill (solid, striped), drawn at a random position,
size and rotation in random colours on a shaded background, plus pixel noise. Deterministic
from a seed; learnable, but colour carries no class information and small or low-contrast
shapes make some images hard.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from latent.errors import UserError

IMAGE_SHAPE = (3, 32, 32)
ROW = 3 * 32 * 32

CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR100_TRAIN, CIFAR100_TEST = "train", "test"
SUBDIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
N_CLASSES = {"cifar10": 10, "cifar100": 100}
LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}

# Per-channel mean/std of the training sets (the CIFAR-100 values are the reference's Normalize).
CHANNEL_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("__builtin__", "bytes"),  # protocol 2 writes an empty bytes object as bytes()
    ("builtins", "bytes"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only plain containers, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _unpickle(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read CIFAR batch {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        raise UserError(f"CIFAR batch {path} is gzip-compressed: extract the CIFAR python archive "
                        "(tar xzf cifar-10-python.tar.gz) and pass the extracted directory")
    if not raw:
        raise UserError(f"CIFAR batch {path} is empty")
    try:
        obj = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except EOFError:
        raise UserError(f"CIFAR batch {path} is truncated (the pickle ends early)") from None
    except pickle.UnpicklingError as exc:
        if "truncated" in str(exc):
            raise UserError(f"CIFAR batch {path} is truncated (the pickle ends early)") from None
        raise UserError(f"CIFAR batch {path} is corrupt or not a CIFAR python batch ({_one_line(exc)})") from None
    except Exception as exc:  # a broken pickle can fail in many ways (ValueError, KeyError, …)
        raise UserError(f"CIFAR batch {path} is corrupt or not a CIFAR python batch "
                        f"({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR batch {path} holds a {type(obj).__name__}, not the dict a CIFAR batch is")
    # Python-2 pickles read with encoding="bytes" have bytes keys; pickles written by Python 3 may have str.
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar_batch(path: str | os.PathLike, label_key: str = "labels", n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64.

    Raises
    ------
    UserError
        If the file cannot be read, is truncated or corrupt, lacks ``data`` or ``label_key``,
        or holds data that is not uint8 N×3072 with N labels in ``0..n_classes-1``.
    """
    path = Path(path)
    d = _unpickle(path)
    for key in ("data", label_key):
        if key not in d:
            raise UserError(f"CIFAR batch {path} has no {key!r} entry (keys: {', '.join(map(str, sorted(d)))})")
    data = d["data"]
    if not isinstance(data, np.ndarray):
        raise UserError(f"CIFAR batch {path}: 'data' is a {type(data).__name__}, expected a uint8 array")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        raise UserError(f"CIFAR batch {path}: 'data' is {data.dtype} of shape {data.shape}; "
                        f"expected uint8 of shape (N, {ROW}) (32x32 RGB rows)")
    try:
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"CIFAR batch {path}: {label_key!r} is not a list of integers") from None
    if labels.ndim != 1 or len(labels) != len(data):
        raise UserError(f"CIFAR batch {path} holds {len(data)} images but {labels.size} {label_key!r}")
    if len(data) == 0:
        raise UserError(f"CIFAR batch {path} holds no images")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise UserError(f"CIFAR batch {path} has label {int(labels.max() if labels.max() >= n_classes else labels.min())}; "
                        f"expected 0-{n_classes - 1}")
    return data.reshape(len(data), *IMAGE_SHAPE), labels


def write_cifar_batch(path: str | os.PathLike, images: np.ndarray, labels, label_key: str = "labels") -> Path:
    """Write a CIFAR-format python batch (``images (N, 3, 32, 32)`` uint8; protocol 2, bytes keys)."""
    path = Path(path)
    images = np.asarray(images, dtype=np.uint8)
    obj = {b"batch_label": b"written by latent", label_key.encode(): [int(v) for v in labels],
           b"data": images.reshape(len(images), -1), b"filenames": [b"%d.png" % i for i in range(len(images))]}
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def find_cifar(data_dir: str | os.PathLike) -> tuple[str, Path]:
    """Which CIFAR (``"cifar10"`` or ``"cifar100"``) ``data_dir`` holds, and the directory with its files.

    ``data_dir`` may be the extracted folder itself or its parent.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"CIFAR data directory {root} does not exist or is not a directory")
    for cand in (root, root / SUBDIRS["cifar10"], root / SUBDIRS["cifar100"]):
        if (cand / CIFAR10_TEST).is_file() or (cand / CIFAR10_TRAIN[0]).is_file():
            return "cifar10", cand
        if (cand / CIFAR100_TRAIN).is_file() or (cand / CIFAR100_TEST).is_file():
            return "cifar100", cand
    archives = sorted(p.name for p in root.glob("cifar-*.tar.gz"))
    hint = f" (found {archives[0]}: extract it first)" if archives else ""
    raise UserError(f"no CIFAR python batches in {root}{hint}; expected data_batch_1..5 and test_batch "
                    "(CIFAR-10) or train and test (CIFAR-100)")


def load_cifar(data_dir: str | os.PathLike) -> dict:
    """The CIFAR-10 or CIFAR-100 training and test sets in ``data_dir``.

    Returns
    -------
    dict
        ``kind`` ("cifar10"/"cifar100"), ``dir``, ``x_train (N, 3, 32, 32) uint8``,
        ``y_train (N,) int64``, ``x_test``, ``y_test``, ``n_classes``.
    """
    kind, d = find_cifar(data_dir)
    key, k = LABEL_KEY[kind], N_CLASSES[kind]
    names = (CIFAR10_TRAIN, (CIFAR10_TEST,)) if kind == "cifar10" else ((CIFAR100_TRAIN,), (CIFAR100_TEST,))
    out: dict = {"kind": kind, "dir": d, "n_classes": k}
    for split, files in zip(("train", "test"), names):
        missing = [f for f in files if not (d / f).is_file()]
        if missing:
            raise UserError(f"{kind.upper()} directory {d} lacks {', '.join(missing)}")
        parts = [read_cifar_batch(d / f, key, k) for f in files]
        out[f"x_{split}"] = np.concatenate([p[0] for p in parts])
        out[f"y_{split}"] = np.concatenate([p[1] for p in parts])
    return out


# --------------------------------------------------------------------------- generated set

SHAPES = ("disk", "square", "triangle", "ring", "cross")
FILLS = ("solid", "striped")
GENERATED_CLASSES = tuple(f"{s}/{f}" for f in FILLS for s in SHAPES)  # class c = shape c % 5, fill c // 5


def generate_images(n: int, seed: int, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """``n`` generated CIFAR-style images ``(n, 3, 32, 32)`` uint8 and balanced labels ``(n,)`` int64.

    Class ``c`` draws shape ``SHAPES[c % 5]`` with fill ``FILLS[c // 5]`` (stripes of random
    period, angle and phase); centre, size, rotation, foreground/background colours, a linear
    background shading and Gaussian pixel noise (sd ``noise``) are random. Labels cycle 0..9 in
    a random order, so every class has ``n // 10`` or one more images.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    shape, striped = y % 5, y >= 5
    yy, xx = np.meshgrid(np.arange(32, dtype=np.float32) + 0.5, np.arange(32, dtype=np.float32) + 0.5, indexing="ij")
    col = lambda a: a.astype(np.float32)[:, None, None]  # noqa: E731  (n,) -> (n, 1, 1)
    cx, cy = col(rng.uniform(11, 21, n)), col(rng.uniform(11, 21, n))
    r = col(rng.uniform(7.5, 11.5, n))
    th = col(rng.uniform(0, 2 * np.pi, n))
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(th) + dy * np.sin(th)) / r  # rotated, size-normalised coordinates
    v = (-dx * np.sin(th) + dy * np.cos(th)) / r
    rad = np.sqrt(u * u + v * v)
    masks = np.stack([
        rad <= 1.0,                                                     # disk
        np.maximum(abs(u), abs(v)) <= 0.8,                              # square
        (v <= 0.5) & (v >= np.sqrt(3.0) * abs(u) - 1.0),                # triangle
        (rad <= 1.0) & (rad >= 0.6),                                    # ring
        ((abs(u) <= 0.3) | (abs(v) <= 0.3)) & (np.maximum(abs(u), abs(v)) <= 1.0),  # cross
    ])
    inside = masks[shape, np.arange(n)]  # (n, 32, 32)
    period = col(rng.uniform(3.5, 5.5, n))
    phi = col(rng.uniform(0, np.pi, n))
    phase = col(rng.uniform(0, 2 * np.pi, n))
    stripes = np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period + phase) > 0
    bg = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)
    fg = np.mod(bg + rng.uniform(0.3, 0.7, (n, 3)).astype(np.float32), 1.0)
    alt = 0.5 * fg + 0.5 * bg  # the second stripe colour
    grad_dir = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    shade = (col(rng.uniform(0.0, 0.25, n)) * ((xx - 16) * np.cos(grad_dir)[:, None, None]
                                               + (yy - 16) * np.sin(grad_dir)[:, None, None]) / 16)
    img = bg[:, :, None, None] + shade[:, None]
    fill = np.where((striped[:, None, None] & ~stripes)[:, None], alt[:, :, None, None], fg[:, :, None, None])
    img = np.where(inside[:, None], fill, img)
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), y
