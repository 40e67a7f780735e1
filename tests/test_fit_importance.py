"""Transition feature importance: the filtered-posterior gradient (reference.md F, done as the paper states)."""

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from latent.importance import filtered_log_posteriors, state_gradients, transition_importance


def tiny_model(seed=0, K=3, d=2):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, d)) * 2
    covars = []
    for _ in range(K):
        a = rng.normal(size=(d, d))
        covars.append(a @ a.T + 0.5 * np.eye(d))
    return {"startprob": rng.dirichlet(np.ones(K)), "transmat": rng.dirichlet(np.ones(K), K),
            "means": means, "covars": np.array(covars)}


def brute_filtered(z, p):
    """Forward algorithm written directly from the definition, with scipy densities."""
    K = len(p["startprob"])
    logb = np.array([[multivariate_normal(p["means"][h], p["covars"][h]).logpdf(zt) for h in range(K)] for zt in z])
    la = np.log(p["startprob"]) + logb[0]
    out = [la - logsumexp(la)]
    for t in range(1, len(z)):
        la = logsumexp(la[:, None] + np.log(p["transmat"]), axis=0) + logb[t]
        out.append(la - logsumexp(la))
    return np.array(out)


def test_forward_pass_matches_definition():
    p = tiny_model()
    z = np.random.default_rng(1).normal(size=(30, 2))
    got = filtered_log_posteriors(z, p["startprob"], p["transmat"], p["means"], p["covars"])
    np.testing.assert_allclose(got, brute_filtered(z, p), atol=1e-10)


def test_forward_pass_survives_forbidden_transitions():
    p = tiny_model()
    p["transmat"] = np.array([[0.9, 0.1, 0], [0, 0.9, 0.1], [0, 0, 1.0]])
    z = np.vstack([np.tile(p["means"][2], (3, 1)), np.tile(p["means"][0] + 40, (3, 1))])
    got = filtered_log_posteriors(z, p["startprob"], p["transmat"], p["means"], p["covars"])
    assert np.all(np.isfinite(logsumexp(got, axis=1))) and np.allclose(np.exp(got).sum(1), 1)


@pytest.mark.parametrize("t", [0, 4, 9])
def test_gradient_matches_finite_difference(t):
    p = tiny_model(seed=2)
    z = np.random.default_rng(3).normal(size=(10, 2)) * 1.5
    filt = np.exp(filtered_log_posteriors(z, p["startprob"], p["transmat"], p["means"], p["covars"]))
    grads = state_gradients(z, filt, p["means"], p["covars"])  # (T, K, d)
    eps = 1e-6
    for k in range(3):
        fd = np.empty(2)
        for i in range(2):
            zp, zm = z.copy(), z.copy()
            zp[t, i] += eps
            zm[t, i] -= eps
            fd[i] = (brute_filtered(zp, p)[t, k] - brute_filtered(zm, p)[t, k]) / (2 * eps)
        np.testing.assert_allclose(grads[t, k], fd, rtol=1e-5, atol=1e-7)


def test_importance_is_mean_of_absolute_gradients_at_last_source_step():
    p = tiny_model(seed=4)
    rng = np.random.default_rng(5)
    runs = [rng.normal(size=(8, 2)), rng.normal(size=(6, 2))]
    paths = [np.array([0, 0, 1, 1, 1, 2, 2, 1]), np.array([0, 1, 1, 2, 2, 2])]
    out = transition_importance(runs, paths, p, ["a", "b"])
    assert [(e["source"], e["target"], e["occurrences"]) for e in out] == [(0, 1, 2), (1, 2, 2), (2, 1, 1)]
    # brute force: |gradient of target state at the last step in the source| averaged over occurrences
    occ = {(0, 1): [(0, 1), (1, 0)], (1, 2): [(0, 4), (1, 2)], (2, 1): [(0, 6)]}
    for e in out:
        vecs = []
        for run, t in occ[(e["source"], e["target"])]:
            filt = np.exp(brute_filtered(runs[run], p))
            prec = [np.linalg.inv(c) for c in p["covars"]]
            zt = runs[run][t]
            k = e["target"]
            g = prec[k] @ (p["means"][k] - zt) - sum(filt[t, h] * prec[h] @ (p["means"][h] - zt) for h in range(3))
            vecs.append(np.abs(g))
        expect = np.mean(vecs, axis=0)
        got = {f["feature"]: f["importance"] for f in e["features"]}
        assert got["a"] == pytest.approx(expect[0]) and got["b"] == pytest.approx(expect[1])
        ranked = [f["feature"] for f in e["features"]]
        assert ranked == (["a", "b"] if expect[0] >= expect[1] else ["b", "a"])
        change = p["means"][e["target"]] - p["means"][e["source"]]
        assert {f["feature"]: f["change_z"] for f in e["features"]} == pytest.approx({"a": change[0], "b": change[1]})


def test_correction_term_is_a_vector_not_the_reference_scalar():
    # with two states the reference's scalar sum differs from the per-feature sum; ours matches the formula
    means = np.array([[1.0, -2.0], [0.0, 3.0]])
    covars = np.array([np.diag([1.0, 4.0]), np.diag([2.0, 0.5])])
    z = np.array([[0.5, 0.5]])
    filt = np.array([[0.25, 0.75]])
    g = state_gradients(z, filt, means, covars)[0, 0]
    v0 = np.array([(1 - 0.5) / 1, (-2 - 0.5) / 4])
    v1 = np.array([(0 - 0.5) / 2, (3 - 0.5) / 0.5])
    np.testing.assert_allclose(g, v0 - (0.25 * v0 + 0.75 * v1))
