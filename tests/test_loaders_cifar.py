"""The CIFAR python-pickle reader on tiny batches written in the real format, good and broken,
and the generated CIFAR-style set."""

import pickle

import numpy as np
import pytest

from latent.collect.data.cifar import (GENERATED_CLASSES, find_cifar, generate_images, load_cifar, read_cifar_batch,
                                write_cifar_batch)
from latent.errors import UserError
from task_checks import peak_bytes


def _py2_style_batch(images, labels, label_key=b"labels"):
    """Protocol-2 bytes as the Python-2 cPickle that wrote the real files: bytes keys, a list of
    int labels and a uint8 numpy array (independent of write_cifar_batch)."""
    return pickle.dumps({b"batch_label": b"training batch 1 of 5", label_key: list(map(int, labels)),
                         b"data": np.ascontiguousarray(images.reshape(len(images), -1)),
                         b"filenames": [b"a.png"] * len(images)}, protocol=2)


def _cifar10_dir(root, n=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    out = {"train": [], "test": None}
    for i in range(1, 6):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        (d / f"data_batch_{i}").write_bytes(_py2_style_batch(x, y))
        out["train"].append((x, y))
    x = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, n_test)
    write_cifar_batch(d / "test_batch", x, y)
    out["test"] = (x, y)
    return d, out


def test_row_layout_is_red_then_green_then_blue(tmp_path):
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, 0] = 11  # red, pixel (0, 0)
    row[0, 1024 + 33] = 22  # green, pixel (1, 1)
    row[0, 2048 + 1023] = 33  # blue, pixel (31, 31)
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps({b"data": row, b"labels": [7]}, protocol=2))
    x, y = read_cifar_batch(path)
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == [7] and y.dtype == np.int64
    assert (x[0, 0, 0, 0], x[0, 1, 1, 1], x[0, 2, 31, 31]) == (11, 22, 33) and int(x.sum()) == 66


def test_cifar10_directory_and_its_parent(tmp_path):
    d, written = _cifar10_dir(tmp_path)
    for where in (d, tmp_path):
        data = load_cifar(where)
        assert data["kind"] == "cifar10" and data["n_classes"] == 10 and data["dir"] == d
        assert data["x_train"].shape == (30, 3, 32, 32) and data["x_test"].shape == (4, 3, 32, 32)
        np.testing.assert_array_equal(data["x_train"][6:12], written["train"][1][0])  # batches in order 1..5
        np.testing.assert_array_equal(data["y_train"][:6], written["train"][0][1])
        np.testing.assert_array_equal(data["y_test"], written["test"][1])


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, n in (("train", 5), ("test", 3)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        obj = {b"data": x.reshape(n, -1), b"fine_labels": [99, 0, 57, 3, 12][:n], b"coarse_labels": [1] * n}
        (d / name).write_bytes(pickle.dumps(obj, protocol=2))
    data = load_cifar(tmp_path)
    assert data["kind"] == "cifar100" and data["n_classes"] == 100
    assert data["y_train"].tolist() == [99, 0, 57, 3, 12] and data["y_test"].tolist() == [99, 0, 57]
    assert find_cifar(d) == ("cifar100", d)


def _bad(tmp_path, blob):
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    with pytest.raises(UserError) as exc:
        read_cifar_batch(path)
    text = str(exc.value)
    assert str(path) in text and "\n" not in text
    return text


def test_truncated_and_corrupt_batches(tmp_path):
    good = _py2_style_batch(np.zeros((4, 3, 32, 32), np.uint8), [1, 2, 3, 4])
    assert "is truncated" in _bad(tmp_path, good[: len(good) // 2])
    assert "is empty" in _bad(tmp_path, b"")
    assert "corrupt or not a CIFAR python batch" in _bad(tmp_path, b"\x80\x02\xff\xfe not a pickle opcode")
    assert "corrupt or not a CIFAR python batch" in _bad(tmp_path, b"PNG\x89 not a pickle at all")
    assert "gzip-compressed" in _bad(tmp_path, b"\x1f\x8b\x08\x00rest")
    assert "holds a list" in _bad(tmp_path, pickle.dumps([1, 2, 3], protocol=2))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    text = _bad(tmp_path, pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    assert "refusing to load io.open" in text
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "obj,message",
    [
        ({b"labels": [0]}, "has no 'data' entry"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, "has no 'labels' entry"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, "shape (2, 1024): CIFAR images are uint8 (N, 3072)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "refusing dtype 'f4'"),
        ({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"labels": [0, 1]}, "of shape (2, 3, 32, 32)"),
        ({b"data": [[0] * 3072], b"labels": [0]}, "'data' is a list"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, "holds 3 images but 2 'labels'"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "has label 10; expected 0-9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, "has label -1"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "not a list of integers"),
        ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "holds no images"),
    ],
    ids=["no-data", "no-labels", "row-length", "dtype", "4d", "not-array", "count", "label-high", "label-neg",
         "label-type", "empty"],
)
def test_wrong_shapes_give_one_clear_line(tmp_path, obj, message):
    assert message in _bad(tmp_path, pickle.dumps(obj, protocol=2))


def test_directory_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_cifar(tmp_path / "nope")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(UserError, match="found cifar-10-python.tar.gz: extract it first"):
        load_cifar(tmp_path)
    d, _ = _cifar10_dir(tmp_path / "x")
    (d / "data_batch_4").unlink()
    with pytest.raises(UserError, match="lacks data_batch_4"):
        load_cifar(d)


def test_round_trip_writer(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    p = write_cifar_batch(tmp_path / "test", x, [5, 6, 7], label_key="fine_labels")
    got_x, got_y = read_cifar_batch(p, "fine_labels", 100)
    np.testing.assert_array_equal(got_x, x)
    assert got_y.tolist() == [5, 6, 7]


def test_generated_set_is_deterministic_balanced_and_varied():
    x, y = generate_images(1000, seed=3)
    x2, y2 = generate_images(1000, seed=3)
    x3, _ = generate_images(1000, seed=4)
    assert x.shape == (1000, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, x3)
    assert np.bincount(y, minlength=10).tolist() == [100] * 10 and len(GENERATED_CLASSES) == 10
    assert x.min() == 0 and x.max() == 255 and 0.3 < x.mean() / 255 < 0.7
    # Colour carries no class information: per-class mean colours are alike.
    means = np.stack([x[y == c].mean((0, 2, 3)) for c in range(10)])
    assert np.ptp(means, axis=0).max() < 40
    # Images of one class differ (random position, size, rotation, colours).
    assert np.abs(x[y == 0][0].astype(int) - x[y == 0][1]).mean() > 20


# --------------------------------------------------------------------------- hostile files


def _hostile_cases():
    import struct

    global_ = lambda module, name: b"c" + module + b"\n" + name + b"\n"  # noqa: E731
    reconstruct = global_(b"numpy.core.multiarray", b"_reconstruct") + global_(b"numpy", b"ndarray")
    u1 = global_(b"numpy", b"dtype") + b"X\x02\x00\x00\x00u1\x89\x88\x87R"  # dtype('u1', False, True)
    return {
        # 29 bytes asking for bytes(50_000_000)
        "bytes-50MB": (b"\x80\x02" + global_(b"__builtin__", b"bytes") + b"J" + struct.pack("<i", 50_000_000)
                       + b"\x85R.", "only the empty bytes()"),
        # an "empty" array of 537 million bytes
        "reconstruct-537MB": (b"\x80\x02" + reconstruct + b"J" + struct.pack("<i", 537_000_000) + b"\x85C\x01b\x87R.",
                              "numpy starts every pickled array empty"),
        # a well-formed array header whose shape wants 3 GB from 10 bytes of data
        "shape-beyond-data": (b"\x80\x02" + reconstruct + b"K\x00\x85C\x01b\x87R(K\x01J" + struct.pack("<i", 10**6)
                              + b"M\x00\x0c\x86" + u1 + b"\x89C\x0a" + bytes(10) + b"tb.", "needs 3072000000 bytes"),
        # BINBYTES8 claiming 256 MB (the C unpickler allocates it before reading)
        "binbytes8-256MB": (b"\x80\x04\x8e" + struct.pack("<Q", 2**28) + b"xx.", "is truncated"),
        # a memo index of 2**24 (the C unpickler grows its memo table to twice that)
        "memo-index": (b"\x80\x02Nr" + struct.pack("<I", 2**24) + b".", "memo index 16777216"),
    }


@pytest.mark.parametrize("case", list(_hostile_cases()))
def test_hostile_pickles_are_refused_in_bounded_memory(tmp_path, case):
    blob, message = _hostile_cases()[case]
    assert len(blob) < 120
    texts = []
    peak = peak_bytes(lambda: texts.append(_bad(tmp_path, blob)))
    assert message in texts[0]
    assert peak < 1_000_000  # the unguarded unpickler allocates 50 MB to 3 GB here


def test_real_batches_load_through_the_checked_stubs(tmp_path):
    # Labels as a numpy int array and as numpy scalars (some re-pickled copies store them so).
    x = np.random.default_rng(5).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    for labels in (np.array([4, 0, 9]), [np.int64(4), np.int64(0), np.int64(9)]):
        path = tmp_path / "b"
        path.write_bytes(pickle.dumps({b"data": x.reshape(3, -1), b"labels": labels}, protocol=2))
        got_x, got_y = read_cifar_batch(path)
        np.testing.assert_array_equal(got_x, x)
        assert got_y.tolist() == [4, 0, 9]
    fortran = np.asfortranarray(x.reshape(3, -1))
    path.write_bytes(pickle.dumps({b"data": fortran, b"labels": [1, 2, 3]}, protocol=2))
    np.testing.assert_array_equal(read_cifar_batch(path)[0], x)
