"""CIFAR-10/100 python-pickle batches (read safely) and a generated CIFAR-style image set.

Real files. The "python version" archives unpack to

* CIFAR-10 (``cifar-10-batches-py/``): ``data_batch_1`` … ``data_batch_5`` (training) and
  ``test_batch``, each a pickled dict with ``b"data"`` (uint8, N×3072: 1024 red, 1024 green,
  1024 blue values of a 32×32 image, row-major) and ``b"labels"`` (N ints 0–9);
* CIFAR-100 (``cifar-100-python/``): ``train`` and ``test`` with ``b"data"`` and
  ``b"fine_labels"`` (0–99; ``b"coarse_labels"`` is ignored).

The files are pickles, so they are read with :func:`unpickle_bounded`: it first walks the opcode
stream (every length must fit in the file, every memo index in the stream), then loads with
:class:`RestrictedUnpickler`, which refuses every global except checked stand-ins for the few
that rebuild a numpy array (integer dtypes, the CIFAR shapes, data present in the file),
``_codecs.encode`` (protocol 2's bytes) and the empty ``bytes()``. Memory stays within a small
multiple of the file's size whatever the file says. A missing, truncated, corrupt or wrong-shaped file is a
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
import math
import os
import pickle
import pickletools
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

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_INT_DTYPES = ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8")  # CIFAR: uint8 pixels, integer labels
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def _text(value) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _NdarrayTag:
    """Stands for ``numpy.ndarray`` inside a pickle: an argument of ``_reconstruct``, never called."""


class _DtypeStub:
    """A dtype named in the pickle, checked before numpy ever sees it."""

    def __init__(self, name: str):
        self.name, self.order = name, "|"

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or _text(state[1]) not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"refusing dtype state {str(state)[:60]}")
        self.order = _text(state[1])

    def resolve(self) -> np.dtype:
        dt = np.dtype(self.name)
        return dt.newbyteorder(self.order) if self.order in "<>" else dt


class _ArrayStub:
    """What ``_reconstruct`` returns: filled in by BUILD only with an array of the CIFAR format's
    shapes (uint8 rows of 3072 pixels, or a 1-D integer vector) whose data are in the file."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("refusing an array state that is not (version,) shape, dtype, order, data")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, _DtypeStub) or not isinstance(raw, bytes) or not isinstance(shape, tuple):
            raise pickle.UnpicklingError("refusing an array without a checked dtype and raw bytes")
        if not 1 <= len(shape) <= 2 or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise pickle.UnpicklingError(f"refusing an array of shape {str(shape)[:60]}")
        dt = dtype.resolve()
        if len(shape) == 2 and (dt != np.uint8 or shape[1] != ROW):
            raise pickle.UnpicklingError(f"refusing a {dt} array of shape {shape}: CIFAR images are uint8 (N, {ROW})")
        need = math.prod(shape) * dt.itemsize  # Python ints: no overflow
        if need != len(raw):
            raise pickle.UnpicklingError(f"array of shape {shape} needs {need} bytes but the file holds {len(raw)}")
        self.array = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(subtype, shape, dtype):
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b"), then BUILD with its data.
    if subtype is not _NdarrayTag or shape != (0,) or _text(dtype) != "b":
        raise pickle.UnpicklingError(f"refusing _reconstruct(shape={str(shape)[:40]}): numpy starts every "
                                     "pickled array empty and fills it from the file")
    return _ArrayStub()


def _dtype(name, align=False, copy=False) -> _DtypeStub:
    if _text(name) not in _INT_DTYPES:
        raise pickle.UnpicklingError(f"refusing dtype {str(name)[:20]!r}: a CIFAR batch holds integers only")
    return _DtypeStub(_text(name))


def _scalar(dtype, data):
    if not isinstance(dtype, _DtypeStub) or not isinstance(data, bytes) or len(data) != dtype.resolve().itemsize:
        raise pickle.UnpicklingError("refusing a numpy scalar that is not one integer")
    return np.frombuffer(data, dtype=dtype.resolve())[0]


def _encode(obj, encoding="utf-8") -> bytes:
    # Protocol 2 writes bytes as _codecs.encode(<str>, "latin1"): one byte per character in the file.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode of anything but latin-1 text")
    return obj.encode("latin-1")


def _empty_bytes(*args):
    if args:  # bytes(50_000_000) would allocate 50 MB from a 29-byte file
        raise pickle.UnpicklingError(f"refusing bytes{str(args)[:40]}: only the empty bytes() of protocol 2")
    return b""


_GLOBALS = {
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_CORE},
    **{(m, "scalar"): _scalar for m in _NUMPY_CORE},
    ("numpy", "ndarray"): _NdarrayTag,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only plain containers, strings, numbers and checked integer arrays.

    Every global it admits is a checked stand-in: arrays only in the shapes the CIFAR format
    uses and only from bytes present in the file, no ``bytes(n)``, no other object. Use
    :func:`unpickle_bounded`, which also checks the opcode stream first.
    """

    def find_class(self, module: str, name: str):
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _check_opcodes(raw: bytes) -> None:
    """Walk the opcodes without building anything. The C unpickler allocates what a length or
    memo index *says* before reading it, so a few bytes could ask for gigabytes; here every
    length must fit in the file and every memo index in the stream."""
    ops, biggest = 0, -1
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(raw)):
            ops += 1
            if op.name in _MEMO_OPS:
                biggest = max(biggest, int(arg))
    except ValueError as exc:
        text = str(exc)
        if any(w in text for w in ("exhausted", "remain", "not enough data")):
            raise EOFError(text) from None  # a length past the end of the file, or no STOP
        raise pickle.UnpicklingError(text) from None
    if biggest >= ops:
        raise pickle.UnpicklingError(f"memo index {biggest} beyond the {ops} opcodes of the file")


def _unstub(obj):
    """Swap the checked arrays in for their stubs (values and list items: a CIFAR batch's depth)."""

    def swap(v):
        if isinstance(v, _ArrayStub):
            if v.array is None:
                raise pickle.UnpicklingError("an array without its data")
            return v.array
        return v.resolve() if isinstance(v, _DtypeStub) else v

    if isinstance(obj, dict):
        return {k: [swap(x) for x in v] if isinstance(v, list) else swap(v) for k, v in obj.items()}
    return swap(obj)


def unpickle_bounded(raw: bytes):
    """Load the pickle bytes of a CIFAR python batch with :class:`RestrictedUnpickler`, in memory
    bounded by a small multiple of ``len(raw)`` whatever the bytes say."""
    _check_opcodes(raw)
    return _unstub(RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load())


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
        obj = unpickle_bounded(raw)
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
