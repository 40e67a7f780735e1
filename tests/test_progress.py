"""Fourier progress measures (latent.collect.progress) and the modadd problem's progress group.

Expectations are independent of the code under test: embeddings and activations planted with
known frequencies, the Gini coefficient by its pairwise definition, numpy's FFT, and the same
seeds computed alone.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latent.collect.progress import (fourier_basis, frequency_energy, gini, restricted_excluded, sum_frequency_basis,
                              top_share)
from latent.collect.seeds import RunSeeds
from latent.collect.tasks.modadd import ModAddConfig, ModAddTask

P = 23


def test_fourier_basis_is_orthonormal_and_matches_numpys_fft():
    cos, sin = fourier_basis(P, dtype=torch.float64)
    B = torch.cat([torch.full((1, P), 1 / math.sqrt(P), dtype=torch.float64), cos, sin])
    np.testing.assert_allclose((B @ B.T).numpy(), np.eye(P), atol=1e-12)
    # the energy of frequency k of a vector is 2 |FFT_k|² / p
    rng = np.random.default_rng(0)
    v = rng.normal(size=(1, P, 1))
    energy = frequency_energy(torch.from_numpy(v), P)[0].numpy()
    fft = np.fft.fft(v[0, :, 0])
    np.testing.assert_allclose(energy, 2 * np.abs(fft[1:(P - 1) // 2 + 1]) ** 2 / P, rtol=1e-10)


def test_planted_frequencies_are_found_and_gini_is_the_pairwise_definition():
    x = np.arange(P)
    w = 2 * np.pi / P
    emb = np.stack([np.cos(3 * w * x), np.sin(3 * w * x), 0.5 * np.cos(7 * w * x), np.zeros(P)], axis=1)
    energy = frequency_energy(torch.from_numpy(emb[None]), P)[0].numpy()
    assert set(np.flatnonzero(energy > 1e-9) + 1) == {3, 7}
    assert energy[2] == pytest.approx(P / 2 * 2) and energy[6] == pytest.approx(0.25 * P / 2)
    assert float(top_share(torch.from_numpy(energy[None]), 2)[0]) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    for vals in (rng.random(11), np.r_[np.zeros(10), 1.0], np.ones(11)):
        brute = np.abs(vals[:, None] - vals[None, :]).sum() / (2 * len(vals) * vals.sum())
        assert float(gini(torch.from_numpy(vals[None]))[0]) == pytest.approx(brute, abs=1e-12)


def _linear_readout(w, bias):
    return lambda h, rows: h @ w + bias


def test_restricted_and_excluded_loss_on_activations_made_of_key_frequencies():
    """Activations that are a + b functions of frequencies 2 and 5 only: keeping those two
    frequencies is the model itself (restricted loss = its loss), removing them leaves only the
    mean activation (excluded loss = the loss of the mean logits)."""
    torch.manual_seed(0)
    S, H, C = 2, 6, P
    a = torch.arange(P).repeat_interleave(P)
    b = torch.arange(P).repeat(P)
    s = (a + b).double()
    w = 2 * math.pi / P
    feats = torch.stack([torch.cos(2 * w * s), torch.sin(2 * w * s), torch.cos(5 * w * s), torch.sin(5 * w * s)], 1)
    acts = torch.stack([0.3 + feats @ torch.randn(4, H, dtype=torch.float64) for _ in range(S)])
    W, bias = torch.randn(S, H, C, dtype=torch.float64), torch.randn(S, 1, C, dtype=torch.float64)
    labels = (a + b) % P
    rows = torch.stack([torch.randperm(P * P)[:200] for _ in range(S)])
    readout = _linear_readout(W, bias)
    restricted, excluded, keys = restricted_excluded(acts, readout, labels, rows, P, key_freqs=2)
    at = torch.gather(acts, 1, rows[:, :, None].expand(-1, -1, H))
    full = F.cross_entropy((at @ W + bias).reshape(-1, C), labels[rows].reshape(-1), reduction="none").view(S, -1)
    np.testing.assert_allclose(restricted.numpy(), full.mean(1).numpy(), rtol=1e-10)
    mean_logits = (acts.mean(1, keepdim=True) @ W + bias).expand(-1, rows.shape[1], -1)
    only_mean = F.cross_entropy(mean_logits.reshape(-1, C), labels[rows].reshape(-1), reduction="none").view(S, -1)
    np.testing.assert_allclose(excluded.numpy(), only_mean.mean(1).numpy(), rtol=1e-10)
    assert sorted(keys[0].tolist()) == [2, 5] and sorted(keys[1].tolist()) == [2, 5]
    # restricting to every frequency keeps every a + b function: still the model itself
    every, _, _ = restricted_excluded(acts, readout, labels, rows, P, key_freqs=(P - 1) // 2)
    np.testing.assert_allclose(every.numpy(), full.mean(1).numpy(), rtol=1e-10)


def test_restricted_plus_excluded_logits_are_the_model_plus_its_mean():
    """For any activations and a linear readout: restricted + excluded logits = the model's
    logits + the logits of the mean activation (checked through the losses' inputs)."""
    torch.manual_seed(1)
    S, H, C = 1, 5, P
    acts = torch.randn(S, P * P, H, dtype=torch.float64).relu()
    W, bias = torch.randn(S, H, C, dtype=torch.float64), torch.randn(S, 1, C, dtype=torch.float64)
    rows = torch.arange(P * P)[None]
    seen = []

    def readout(h, r):
        seen.append(h @ W + bias)
        return seen[-1]

    restricted_excluded(acts, readout, (torch.arange(P * P) // P) % P, rows, P, key_freqs=3)
    model = acts @ W + bias
    mean = acts.mean(1, keepdim=True) @ W + bias
    np.testing.assert_allclose((seen[0] + seen[1]).numpy(), (model + mean).numpy(), atol=1e-9)
    # and P(N) is the projection on the a + b frequency vectors: orthonormal rows
    B = sum_frequency_basis(P, dtype=torch.float64)
    np.testing.assert_allclose((B @ B.T).numpy(), np.eye(P - 1), atol=1e-12)


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_progress_of_a_seed_in_a_batch_equals_it_alone(model):
    cfg = ModAddConfig(model=model, p=P, d_model=16, n_heads=2, d_mlp=32, d_embed=8, d_hidden=16, key_freqs=3)
    task = ModAddTask()
    seeds = [RunSeeds.derive(s, None) for s in range(3)]
    batch = task.build(cfg, seeds, torch.device("cpu"))
    for _ in range(5):
        batch.train_step()
    alone = task.build(cfg, seeds[1:2], torch.device("cpu"))
    for _ in range(5):
        alone.train_step()
    got, ref = batch.progress_metrics(), alone.progress_metrics()
    assert set(got) == set(task.metric_groups(cfg)["progress"])
    for k in ref:
        np.testing.assert_allclose(got[k][1].item(), ref[k][0].item(), rtol=2e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("model, ops", [("mlp", "add"), ("transformer", "add"), ("transformer", "add,sub")])
def test_the_affine_readout_shortcut_gives_the_generic_readouts_numbers(model, ops):
    """restricted_excluded with ``linear`` (P(N) read out through the readout's linear part) against
    the same call without it (P(N) built at every training row and read out as it is)."""
    cfg = ModAddConfig(model=model, p=P, d_model=16, n_heads=2, d_mlp=32, d_embed=8, d_hidden=16, key_freqs=3,
                       op=ops)
    problem = ModAddTask().build(cfg, [RunSeeds.derive(s, None) for s in range(3)], torch.device("cpu"))
    for _ in range(30):
        problem.train_step()
    P64 = {k: v.detach().double() for k, v in problem.params.items()}
    n = P * P
    acts, readout, linear = problem._hidden_and_readout(P64, problem._a[:n].expand(3, -1),
                                                        problem._b[:n].expand(3, -1), problem._op[:n].expand(3, -1))
    assert linear is not None
    train = problem.train_idx[:, :int(cfg.train_frac * n)]
    fast = restricted_excluded(acts, readout, problem._y[:n], train, P, 3, linear=linear)
    slow = restricted_excluded(acts, readout, problem._y[:n], train, P, 3)
    for f, s_ in zip(fast, slow):
        np.testing.assert_allclose(f.numpy(), s_.numpy(), rtol=1e-10)
    ln = ModAddTask().build(ModAddConfig(model="transformer", p=P, d_model=16, n_heads=2, d_mlp=32, layernorm=True),
                            [RunSeeds.derive(0, None)], torch.device("cpu"))
    assert ln._hidden_and_readout(ln.params, ln._a[None], ln._b[None], ln._op[None])[2] is None  # not affine


def test_discrete_logs_and_the_multiplicative_circle():
    from latent.collect.progress import discrete_log, op_combination, primitive_root

    for p in (5, 7, 11, 23, 59):
        g, log = primitive_root(p), discrete_log(p)
        assert sorted(log[1:].tolist()) == list(range(p - 1))
        assert all(pow(g, int(log[x]), p) == x for x in range(1, p))
    a = torch.arange(1, 11).repeat_interleave(10)
    b = torch.arange(1, 11).repeat(10)
    combo, valid = op_combination(a, b, 11, "mul")
    log = discrete_log(11)
    assert valid.all() and all(int(combo[i]) == int(log[(int(a[i]) * int(b[i])) % 11]) for i in range(len(a)))
    combo, _ = op_combination(a, b, 11, "div")
    assert all(pow(primitive_root(11), int(combo[i]), 11) * int(b[i]) % 11 == int(a[i]) for i in range(len(a)))


def test_restricted_loss_of_a_multiplication_circuit():
    """Activations that are cos/sin of frequency 3 of log(a·b) on the multiplicative circle: the
    multiplicative basis finds frequency 3 and restricting to it is the model itself."""
    from latent.collect.progress import cyclic_basis, op_combination

    p = 13
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    combo, valid = op_combination(a, b, p, "mul")
    ang = 2 * math.pi * 3 * combo.double() / (p - 1)
    feats = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * valid[:, None]
    acts = (0.2 + feats @ torch.randn(2, 4, dtype=torch.float64))[None]
    W = torch.randn(1, 4, p, dtype=torch.float64)
    rows = torch.nonzero(valid)[:, 0][None]
    basis = cyclic_basis(combo, p - 1, valid, dtype=torch.float64)
    restricted, _, keys = restricted_excluded(acts, lambda h, r: h @ W, (a * b) % p, rows, p, 1, basis)
    at = acts[:, rows[0]]
    full = F.cross_entropy((at @ W)[0], ((a * b) % p)[rows[0]])
    assert keys.tolist() == [[3]] and float(restricted[0]) == pytest.approx(float(full), rel=1e-10)


@pytest.mark.slow
def test_a_trained_transformer_has_the_fourier_structure_nanda_et_al_describe(tmp_path):
    """Two seeds of the contrast transformer trained to the end (they grok): the embedding settles
    on a few key frequencies, restricted loss falls far below excluded loss, the key frequencies
    stop changing, and the sum of squared weights falls from its peak (cleanup)."""
    from latent.collect.study import collect_study
    from latent.store import Study

    collect_study("modadd", 2, preset="contrast", store=tmp_path, threads=2, progress=False)
    study = Study(tmp_path / "modadd-contrast")
    for seed in (0, 1):
        run = study.read_run(seed)
        first, last = run.iloc[0], run.iloc[-1]
        assert last["val_acc"] > 0.95  # grokked
        assert first["embed_gini"] < 0.1 < 0.3 < last["embed_gini"]
        assert last["embed_top_share"] > 0.7  # five frequencies carry most of the embedding
        assert last["restricted_loss"] < 0.01 < 1.0 < last["excluded_loss"]
        keys = run[[f"key_freq_{i}" for i in range(1, 4)]].to_numpy()
        # the last 500 epochs: the same three leading key frequencies (a fifth may trade places with a near tie)
        assert (np.sort(keys[-50:], axis=1) == np.sort(keys[-1])).all()
        assert run["sum_sq_weights"].max() > 1.3 * last["sum_sq_weights"]
        # circuit formation before the jump: excluded loss has risen well before validation accuracy passes 0.9
        jump = int(np.argmax(run["val_acc"].to_numpy() > 0.9))
        assert run["excluded_loss"].iloc[:jump].max() > 1.2 * first["excluded_loss"]
