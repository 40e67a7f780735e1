"""The IDX reader and MNIST loader on tiny files written in the real format, good and broken."""

import gzip
import struct

import numpy as np
import pytest

from latent.collect.data import load_mnist, parse_idx, read_idx, write_idx
from latent.errors import UserError
from task_checks import peak_bytes


def _idx_bytes(code, dims, payload):
    """Hand-assembled IDX bytes (independent of write_idx): magic, big-endian dims, payload."""
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def test_hand_built_ubyte_file_is_decoded(tmp_path):
    payload = bytes(range(24))
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(_idx_bytes(0x08, (2, 3, 4), payload))
    arr = read_idx(path)
    assert arr.shape == (2, 3, 4) and arr.dtype == np.uint8
    assert arr[1, 2, 3] == 23 and arr[0, 1, 0] == 4


def test_big_endian_int_and_float_types(tmp_path):
    ints = _idx_bytes(0x0C, (3,), struct.pack(">iii", -1, 2, 70000))
    assert parse_idx(ints).tolist() == [-1, 2, 70000]
    floats = _idx_bytes(0x0D, (2,), struct.pack(">ff", 1.5, -0.25))
    assert parse_idx(floats).tolist() == [1.5, -0.25]
    shorts = _idx_bytes(0x0B, (1, 2), struct.pack(">hh", -300, 5))
    out = parse_idx(shorts)
    assert out.dtype == np.int16 and out.dtype.isnative and out.tolist() == [[-300, 5]]


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_plain_and_gzip(tmp_path, compress):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / ("a.gz" if compress else "a"), arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    np.testing.assert_array_equal(read_idx(path), arr)


def test_gzip_detected_by_content_not_name(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"  # no .gz suffix, yet compressed
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (3,), b"\x01\x02\x09")))
    assert read_idx(path).tolist() == [1, 2, 9]


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x00\x00", "too short for the 4-byte IDX magic"),
        (b"\x50\x4b\x03\x04rest", "not an IDX file"),  # a zip file
        (_idx_bytes(0x07, (1,), b"\x00"), "unknown IDX type code 0x07"),
        (bytes([0, 0, 8, 0]), "declares 0 dimensions"),
        (bytes([0, 0, 8, 3]) + struct.pack(">I", 2), "truncated inside its header"),
        (_idx_bytes(0x08, (2, 28, 28), bytes(2 * 28 * 28 - 1)), "truncated: header says 2x28x28"),
        (_idx_bytes(0x0C, (2,), bytes(7)), "found 7"),  # int32 items: 8 bytes needed
        (_idx_bytes(0x08, (3,), bytes(5)), "2 bytes after"),
    ],
    ids=["short", "magic", "type", "ndim0", "header", "payload", "itemsize", "trailing"],
)
def test_broken_files_give_one_clear_line(tmp_path, data, message):
    path = tmp_path / "broken-idx"
    path.write_bytes(data)
    with pytest.raises(UserError) as exc:
        read_idx(path)
    text = str(exc.value)
    assert message in text and str(path) in text and "\n" not in text


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(_idx_bytes(0x08, (100,), bytes(100)))
    path = tmp_path / "t.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="corrupt or truncated gzip"):
        read_idx(path)
    fake = tmp_path / "plain.gz"
    fake.write_bytes(_idx_bytes(0x08, (1,), b"\x00"))
    with pytest.raises(UserError, match="not gzip-compressed"):
        read_idx(fake)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read IDX file"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- MNIST directory


def _write_mnist(root, n_train=6, n_test=4, gz=True, shape=(28, 28), labels=None, img_dtype=np.uint8):
    rng = np.random.default_rng(1)
    root.mkdir(exist_ok=True)
    sfx = ".gz" if gz else ""
    xs = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, *shape)).astype(img_dtype)
        y = rng.integers(0, 10, size=n).astype(np.uint8) if labels is None else np.asarray(labels[prefix], np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", y)
        xs[prefix] = (x, y)
    return xs


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_directory(tmp_path, gz):
    xs = _write_mnist(tmp_path / "m", gz=gz)
    d = load_mnist(tmp_path / "m")
    np.testing.assert_array_equal(d["x_train"], xs["train"][0])
    np.testing.assert_array_equal(d["y_test"], xs["t10k"][1])
    assert d["y_train"].dtype == np.int64 and d["x_test"].shape == (4, 28, 28)


def test_load_mnist_kaggle_spelling(tmp_path):
    xs = _write_mnist(tmp_path / "m", gz=False)
    for p in (tmp_path / "m").iterdir():
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    np.testing.assert_array_equal(load_mnist(tmp_path / "m")["x_train"], xs["train"][0])


def test_load_mnist_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_mnist(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*not found"):
        load_mnist(tmp_path / "empty")
    _write_mnist(tmp_path / "small", shape=(8, 8))
    with pytest.raises(UserError, match="8x8 images; MNIST images are 28x28"):
        load_mnist(tmp_path / "small")
    _write_mnist(tmp_path / "flt", img_dtype=np.float32)
    with pytest.raises(UserError, match="uint8 images"):
        load_mnist(tmp_path / "flt")
    _write_mnist(tmp_path / "count", labels={"train": [1] * 5, "t10k": [2] * 4})
    with pytest.raises(UserError, match="6 images but .* 5 labels"):
        load_mnist(tmp_path / "count")
    _write_mnist(tmp_path / "lab", labels={"train": [1, 2, 3, 4, 5, 12], "t10k": [2] * 4})
    with pytest.raises(UserError, match="label 12"):
        load_mnist(tmp_path / "lab")
    root = tmp_path / "trunc"
    _write_mnist(root, gz=False)
    f = root / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte is truncated"):
        load_mnist(root)


# --------------------------------------------------------------------------- hostile files


def test_header_sizes_are_multiplied_without_overflow(tmp_path):
    # 65536**4 = 2**64 wraps to 0 in int64, which matched the empty payload and crashed in reshape.
    path = tmp_path / "overflow-idx"
    path.write_bytes(_idx_bytes(0x08, (65536, 65536, 65536, 65536), b""))
    with pytest.raises(UserError) as exc:
        read_idx(path)
    assert "18446744073709551616 bytes of data, found 0" in str(exc.value) and "\n" not in str(exc.value)


def test_gzip_bomb_is_inflated_only_as_far_as_its_header_declares(tmp_path):
    path = tmp_path / "bomb-idx.gz"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, (10,), bytes(100_000_000)), 9))  # ~100 kB on disk
    assert path.stat().st_size < 200_000
    errors = []

    def read():
        with pytest.raises(UserError) as exc:
            read_idx(path)
        errors.append(str(exc.value))

    assert peak_bytes(read) < 2_000_000  # not the 100 MB the stream holds
    assert "decompresses to more bytes than its header declares" in errors[0] and str(path) in errors[0]


def test_gzip_members_and_padding(tmp_path):
    body = _idx_bytes(0x08, (6,), bytes(range(6)))
    path = tmp_path / "two-members-idx.gz"
    path.write_bytes(gzip.compress(body[:7]) + gzip.compress(body[7:]) + bytes(8))  # split header, zero padding
    assert read_idx(path).tolist() == list(range(6))
    path.write_bytes(gzip.compress(body) + b"junk")
    with pytest.raises(UserError, match="4 bytes of garbage after its gzip stream"):
        read_idx(path)
    path.write_bytes(gzip.compress(body) + gzip.compress(b"\x07"))
    with pytest.raises(UserError, match="decompresses to more bytes than its header declares"):
        read_idx(path)
