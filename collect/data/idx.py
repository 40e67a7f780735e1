"""IDX files (the MNIST format), plain or gzip-compressed, with strict validation.

Format (big-endian): two zero bytes, a type code, the number of dimensions ``d``, then ``d``
unsigned 32-bit sizes, then ``prod(sizes)`` items of the type. Anything else — a short header,
a bad magic number, a payload shorter or longer than the header promises, a broken gzip
stream — is a :class:`~latent.errors.UserError` that names the file and what is wrong.

Hostile files stay cheap: sizes are multiplied as Python integers (no overflow), and a gzip
stream is inflated only as far as its own header says it should go (one byte more shows extra
data), so a small file cannot decompress into gigabytes; no file may declare more than
:data:`MAX_IDX_BYTES` of items.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from latent.errors import UserError

# IDX type code -> big-endian numpy dtype.
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

GZIP_MAGIC = b"\x1f\x8b"
MAX_DIMS = 8  # real IDX files have 1-3; a larger count means a corrupt header


#: Most item bytes one IDX file may declare (4 GiB; EMNIST's largest file holds ~550 MB).
MAX_IDX_BYTES = 2**32


def _declared_size(out: bytes | bytearray) -> int | None:
    """How many bytes in all the IDX file starting with ``out`` declares, as far as ``out`` tells
    (a header not yet complete asks for its own length); None if ``out`` is no IDX header."""
    if len(out) < 4:
        return 4
    code, ndim = out[2], out[3]
    if out[0] or out[1] or code not in IDX_TYPES or not 1 <= ndim <= MAX_DIMS:
        return None
    header = 4 + 4 * ndim
    if len(out) < header:
        return header
    dims = struct.unpack_from(f">{ndim}I", out, 4)
    return header + math.prod(dims) * IDX_TYPES[code].itemsize


def _gunzip(raw: bytes, name: str) -> bytearray:
    """Inflate the gzip member(s) of ``raw`` no further than the IDX header inside declares (+1 byte).

    Stops at a bad header (:func:`parse_idx` then names the problem).
    """
    out = bytearray()
    data = raw
    try:
        while data:
            d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            while (cap := _declared_size(out)) is not None:
                if cap > MAX_IDX_BYTES + 4 + 4 * MAX_DIMS:
                    raise UserError(f"{name} declares {cap} bytes, more than the {MAX_IDX_BYTES} bytes of items "
                                    "latent reads from one IDX file")
                room = cap + 1 - len(out)  # one byte past the declared end reveals extra data
                if room <= 0:
                    raise UserError(f"{name} is corrupt: it decompresses to more bytes than its header declares")
                chunk = d.decompress(data, room)
                data = d.unconsumed_tail
                out += chunk
                if d.eof or (not data and not chunk):
                    break
            else:
                return out
            if not d.eof:
                raise UserError(f"{name} is a corrupt or truncated gzip stream (it ends before its end marker)")
            data = d.unused_data
            if data[:2] != GZIP_MAGIC:
                if data.strip(b"\0"):
                    raise UserError(f"{name} has {len(data)} bytes of garbage after its gzip stream")
                break
    except zlib.error as exc:
        raise UserError(f"{name} is a corrupt or truncated gzip stream ({exc})") from None
    cap = _declared_size(out)
    if cap is not None and len(out) > cap:
        raise UserError(f"{name} is corrupt: it decompresses to more bytes than its header declares")
    return out


def _read_bytes(path: Path) -> bytes | bytearray:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    if raw[:2] == GZIP_MAGIC:
        return _gunzip(raw, f"IDX file {path}")
    if path.suffix == ".gz":
        raise UserError(f"IDX file {path} ends in .gz but is not gzip-compressed")
    return raw


def parse_idx(data: bytes | bytearray, name: str = "IDX data") -> np.ndarray:
    """Decode the bytes of one (uncompressed) IDX file into an array in native byte order.

    Raises
    ------
    UserError
        For a short header, a bad magic number or type code, or a payload whose size does not
        match the dimensions in the header.
    """
    if len(data) < 4:
        raise UserError(f"{name} is truncated: {len(data)} bytes, too short for the 4-byte IDX magic number")
    if data[0] != 0 or data[1] != 0:
        raise UserError(f"{name} is not an IDX file: magic number starts with {data[:2].hex()}, expected 0000")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise UserError(f"{name} has unknown IDX type code 0x{code:02x} (expected one of "
                        f"{', '.join(f'0x{c:02x}' for c in IDX_TYPES)})")
    if not 1 <= ndim <= MAX_DIMS:
        raise UserError(f"{name} declares {ndim} dimensions; an IDX file has 1 to {MAX_DIMS}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{name} is truncated inside its header ({len(data)} of {header} bytes)")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    dtype = IDX_TYPES[code]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a hostile header cannot overflow
    got = len(data) - header
    if got < expected:
        raise UserError(f"{name} is truncated: header says {'x'.join(map(str, dims))} items of {dtype.itemsize} "
                        f"byte(s) = {expected} bytes of data, found {got}")
    if got > expected:
        raise UserError(f"{name} is corrupt: {got - expected} bytes after the {'x'.join(map(str, dims))} items "
                        "its header declares")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not; detected from its first bytes)."""
    path = Path(path)
    return parse_idx(_read_bytes(path), name=f"IDX file {path}")


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip when ``compress`` or when the name ends in ``.gz``)."""
    path = Path(path)
    arr = np.asarray(array)
    codes = {dt.newbyteorder("="): c for c, dt in IDX_TYPES.items()}
    native = arr.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX has no type for dtype {arr.dtype}")
    code = codes[native]
    body = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    body += arr.astype(IDX_TYPES[code]).tobytes()
    if compress or (compress is None and path.suffix == ".gz"):
        body = gzip.compress(body)
    path.write_bytes(body)
    return path


# --------------------------------------------------------------------------- MNIST

# Standard names of the four files; the Kaggle mirror uses "." instead of "-" before idxN.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def find_mnist_file(data_dir: Path, stem: str) -> Path:
    """The file for ``stem`` in ``data_dir``: plain or ``.gz``, ``-idx`` or ``.idx`` spelling."""
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise UserError(f"MNIST file {stem}[.gz] not found in {data_dir}; the directory needs "
                    f"{', '.join(MNIST_FILES.values())} (gzip or not)")


def _images_labels(data_dir: Path, images_stem: str, labels_stem: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    ip, lp = find_mnist_file(data_dir, images_stem), find_mnist_file(data_dir, labels_stem)
    images, labels = read_idx(ip), read_idx(lp)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{ip} should hold uint8 images (N, rows, cols); found {images.dtype} of shape {images.shape}")
    if images.shape[1:] != (28, 28):
        raise UserError(f"{ip} holds {images.shape[1]}x{images.shape[2]} images; MNIST images are 28x28")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise UserError(f"{lp} should hold uint8 labels (N,); found {labels.dtype} of shape {labels.shape}")
    if len(images) != len(labels):
        raise UserError(f"{ip} holds {len(images)} images but {lp} holds {len(labels)} labels")
    if len(labels) == 0:
        raise UserError(f"{ip} holds no images")
    if labels.max() >= n_classes:
        raise UserError(f"{lp} has label {int(labels.max())}; MNIST labels are 0-{n_classes - 1}")
    return images, labels


def load_mnist(data_dir: str | os.PathLike, n_classes: int = 10) -> dict[str, np.ndarray]:
    """The MNIST training and test sets from the four IDX files in ``data_dir``.

    Returns
    -------
    dict
        ``x_train (N, 28, 28) uint8``, ``y_train (N,) int64``, ``x_test``, ``y_test``.

    Raises
    ------
    UserError
        If the directory or a file is missing, or a file is truncated, corrupt or of the wrong shape.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"MNIST data directory {root} does not exist or is not a directory")
    x_train, y_train = _images_labels(root, MNIST_FILES["train_images"], MNIST_FILES["train_labels"], n_classes)
    x_test, y_test = _images_labels(root, MNIST_FILES["test_images"], MNIST_FILES["test_labels"], n_classes)
    return {
        "x_train": x_train,
        "y_train": y_train.astype(np.int64),
        "x_test": x_test,
        "y_test": y_test.astype(np.int64),
    }
