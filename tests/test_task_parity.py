"""Sparse parity: data, the batched MLP against plain modules, hinge loss, metrics on fixed
weights, batch-vs-alone and mid-epoch resume, and a tiny study that `latent fit` accepts."""

import math

import numpy as np
import pytest
import torch

from latent.collect.metrics import reference_metrics
from latent.collect.seeds import RunSeeds
from latent.collect.study import collect_study
from latent.collect.tasks import get_task
from latent.collect.tasks.parity import PRESETS, ParityConfig, ParityProblem, draw_data, hinge_loss_acc
from latent.errors import UserError
from latent.store import Study
from task_checks import assert_mid_epoch_resume_exact

TINY = ["hidden=16", "n_train=40", "n_val=20", "batch_size=8", "log_every=1"]


def _problem(cfg, seeds, split_seed=None):
    return ParityProblem(cfg, [RunSeeds.derive(s, split_seed) for s in seeds], torch.device("cpu"))


def test_data_labels_are_the_parity_of_the_first_k_bits_and_follow_the_split_stream():
    cfg = ParityConfig(n_train=50, n_val=10)
    x, y = draw_data(cfg, RunSeeds.derive(0).split)
    assert x.shape == (60, 40) and set(np.unique(x)) == {-1.0, 1.0}
    np.testing.assert_array_equal(y, x[:, 0] * x[:, 1] * x[:, 2])
    assert 0.3 < (x == 1).mean() < 0.7
    # The seed changes the data sample itself (reference), unless the study shares one.
    a, b = _problem(cfg, [0, 1]), _problem(cfg, [0, 1], split_seed=5)
    assert not torch.equal(a.x_train[0], a.x_train[1])
    assert torch.equal(b.x_train[0], b.x_train[1]) and torch.equal(b.x_val[0], b.x_val[1])


def test_batched_forward_matches_plain_sequential():
    cfg = ParityConfig(hidden=24, init_scaling=1.7)
    pr = _problem(cfg, [0, 1, 2])
    with torch.no_grad():  # non-zero biases so they matter
        pr.params["b1"].normal_(generator=torch.Generator().manual_seed(0))
        pr.params["b2"].fill_(0.3)
    for i in range(3):
        net = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(), torch.nn.Linear(24, 1))
        with torch.no_grad():
            net[0].weight.copy_(pr.params["W1"][i]); net[0].bias.copy_(pr.params["b1"][i, 0])
            net[2].weight.copy_(pr.params["W2"][i]); net[2].bias.copy_(pr.params["b2"][i, 0])
        x, y = pr.x_val[i], pr.y_val[i]
        with torch.no_grad():
            f = net(x).squeeze(-1)
        expected_loss = torch.clamp(1 - y * f, min=0).mean()
        expected_acc = (torch.sign(f) == y).float().mean()
        loss, acc = pr.evaluate("val")
        assert float(loss[i]) == pytest.approx(float(expected_loss), rel=1e-5)
        assert float(acc[i]) == pytest.approx(float(expected_acc))


def test_init_is_xavier_uniform_with_zero_biases_times_init_scaling():
    cfg = ParityConfig(hidden=1000)
    P = {k: v.detach()[0] for k, v in _problem(cfg, [3]).params.items()}
    bound = math.sqrt(6 / (40 + 1000))
    assert P["W1"].abs().max() <= bound and P["W1"].abs().max() > 0.99 * bound
    assert float(P["W1"].var()) == pytest.approx(bound**2 / 3, rel=0.03)  # U(-a, a) has variance a²/3
    assert P["W2"].shape == (1, 1000) and P["W2"].abs().max() <= math.sqrt(6 / 1001)
    assert not P["b1"].any() and not P["b2"].any()
    scaled = _problem(ParityConfig(hidden=1000, init_scaling=2.0), [3]).params["W1"].detach()[0]
    torch.testing.assert_close(scaled, 2 * P["W1"])


def test_hinge_loss_and_sign_accuracy_by_hand():
    f = torch.tensor([[2.0, 0.5, -0.3, 0.0]])
    y = torch.tensor([[1.0, 1.0, 1.0, -1.0]])
    loss, correct = hinge_loss_acc(f, y)
    assert float(loss[0]) == pytest.approx(0 + 0.5 + 1.3 + 1.0)
    assert int(correct[0]) == 2  # sign(0) = 0 matches neither label


def test_reference_metrics_on_fixed_weights_by_hand():
    pr = _problem(ParityConfig(n_bits=3, k=2, hidden=2, n_train=4, n_val=4), [0])
    with torch.no_grad():
        pr.params["W1"].copy_(torch.tensor([[[3.0, 0, 0], [0, -4, 0]]]))  # σ = 4, 3
        pr.params["W2"].copy_(torch.tensor([[[6.0, 8.0]]]))  # σ = 10, one value
        pr.params["b1"].copy_(torch.tensor([[[1.0, 2.0]]]))
        pr.params["b2"].copy_(torch.tensor([[[-3.0]]]))
    m = {k: float(v[0]) for k, v in reference_metrics(pr.weight_groups()).items()}
    assert m["l1"] == pytest.approx((7 + 14) / 2)
    assert m["l2"] == pytest.approx((5 + 10) / 2)
    assert m["trace"] == pytest.approx((-1 + 6) / 2)
    assert m["spectral"] == pytest.approx((4 + 10) / 2)
    assert m["code_sparsity"] == pytest.approx((7 / 5 + 14 / 10) / 2)
    assert m["computational_sparsity"] == pytest.approx((-1 / 4 + 6 / 10) / 2)
    assert m["mean_lambda"] == pytest.approx((3.5 + 10) / 2)
    assert m["variance_lambda"] == pytest.approx(0.5)  # the 1×2 matrix's NaN variance is skipped
    w = np.array([3, 0, 0, 0, -4, 0, 6, 8.0])
    assert m["mean_w"] == pytest.approx(w.mean())
    assert m["median_w"] == 0.0
    assert m["var_w"] == pytest.approx(w.var(ddof=1))
    assert (m["mean_b"], m["median_b"], m["var_b"]) == pytest.approx((0.0, 1.0, 7.0))


def test_mid_epoch_resume_continues_exactly():
    cfg = ParityConfig(hidden=16, n_train=40, n_val=10, batch_size=8)  # 5 steps per epoch
    states = assert_mid_epoch_resume_exact(lambda: _problem(cfg, [0, 1]), 3, 5)
    assert int(states[0]["extra/cursor"]) == 3 and states[1]["extra/order"].shape == (40,)


def _collect(store, seeds, overrides, epochs, **kw):
    return collect_study("parity", seeds, overrides=list(overrides) + [f"epochs={epochs}"], store=store,
                         threads=1, progress=False, **kw)


def test_seed_trained_alone_equals_seed_in_batch(tmp_path):
    _collect(tmp_path / "batch", 3, TINY, 4)
    _collect(tmp_path / "alone", "2-2", TINY, 4)
    batched = Study(tmp_path / "batch" / "parity").read_run(2)
    alone = Study(tmp_path / "alone" / "parity").read_run(2)
    assert list(batched.columns) == list(alone.columns) and len(batched) == 5
    np.testing.assert_allclose(alone.to_numpy(float), batched.to_numpy(float), rtol=1e-5, atol=1e-7)
    other = Study(tmp_path / "batch" / "parity").read_run(1)
    assert not np.allclose(other["l2"], batched["l2"])


def test_tiny_study_end_to_end_is_fit_ready(tmp_path):
    res = _collect(tmp_path, 2, TINY, 3)
    assert res.seeds_trained == [0, 1]
    study = Study(tmp_path / "parity")
    meta = study.read_meta()
    assert meta["task"] == "parity" and meta["step_unit"] == "epoch"
    assert meta["convergence"] == {"metric": "val_acc", "threshold": 0.9, "direction": "above"}
    assert meta["config"]["hidden"] == 16 and meta["split"] == {"mode": "per_run"}
    assert meta["data"]["source"] == "generated" and meta["data"]["n_train"] == 40
    frame = study.read_run(0)
    assert frame["step"].tolist() == [0, 1, 2, 3]  # "step" counts epochs, as the reference logs parity
    assert frame["epoch"].tolist() == [0, 1, 2, 3]
    assert study.read_manifest(0)["opt_steps"] == 15  # 40 rows / batch 8 = 5 steps per epoch
    assert {"train_loss", "val_loss", "train_acc", "val_acc"} <= set(frame.columns)
    assert frame[meta["features"]].notna().all().all()
    assert ((frame["val_acc"] * 20) % 1 == 0).all()  # accuracies over 20 validation rows


def test_fit_accepts_the_study(tmp_path):
    pytest.importorskip("latent.cli.fit")
    from latent.cli import main

    # An easy parity (2 of 4 bits) so that runs converge at different epochs under the study's threshold.
    easy = ["n_bits=4", "k=2", "hidden=32", "n_train=64", "n_val=20", "batch_size=16", "log_every=1"]
    _collect(tmp_path, 5, easy, 12)
    rc = main(["fit", "--store", str(tmp_path), "--study", "parity", "--max-states", "2", "--restarts", "1",
               "--n-boot", "10", "--jobs", "1", "--quiet", "--test-fraction", "0.2"])
    assert rc == 0
    assert any((tmp_path / "parity" / "fits").iterdir())


def test_presets_and_validation():
    task = get_task("parity")
    paper = ParityConfig(**PRESETS["paper"])
    assert (paper.hidden, paper.n_train, paper.n_val, paper.batch_size, paper.epochs) == (1000, 1000, 100, 32, 300)
    assert (paper.lr, paper.weight_decay, paper.n_bits, paper.k) == (0.1, 0.01, 40, 3)
    assert task.convergence(paper).threshold == 0.9 and task.step_unit == "epoch"
    with pytest.raises(UserError, match="k .* must not exceed"):
        ParityConfig(n_bits=2, k=3).validate()
    with pytest.raises(UserError, match="hidden must be positive"):
        ParityConfig(hidden=0).validate()


@pytest.mark.slow
def test_default_setup_memorises_before_it_generalises():
    # The characteristic grokking-like delay of the default preset, on 4 seeds (~10 s).
    torch.set_num_threads(1)
    pr = _problem(ParityConfig(**PRESETS["default"]), [0, 1, 2, 3])
    train_at, val_at = [None] * 4, [None] * 4
    for epoch in range(1, 301):
        pr.train_epoch()
        _, ta = pr.evaluate("train")
        _, va = pr.evaluate("val")
        for i in range(4):
            if train_at[i] is None and ta[i] >= 0.99:
                train_at[i] = epoch
            if val_at[i] is None and va[i] > 0.9:
                val_at[i] = epoch
        if all(v is not None for v in val_at):
            break
    assert sum(v is not None for v in val_at) >= 3
    gaps = [v - t for t, v in zip(train_at, val_at) if v is not None and t is not None]
    assert all(g >= 10 for g in gaps), (train_at, val_at)
