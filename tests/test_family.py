"""The model-family seam (latent.family) and the autoregressive HMM (latent.autoregressive).

Expectations are independent of the code under test: scipy's multivariate normal for densities,
a planted AR-HMM sampled here for recovery, hmmlearn's own GaussianHMM for the Gaussian family,
and fit ids computed by the commit before the family setting existed.
"""

import json

import numpy as np
import pytest
from hmmlearn.hmm import GaussianHMM
from scipy.stats import multivariate_normal
from sklearn.metrics import adjusted_rand_score

from latent.cli import main
from latent.errors import UserError
from latent.family import FAMILIES, get_family
from latent.fit import FitConfig, fit_id
from latent.hmm import HMMSelector
from latent.importance import transition_importance
from planted import detour_study

K, D = 3, 3
COEF = np.array([[0.98, 0.95, 0.99], [0.3, 0.5, 0.2], [0.999, 0.99, 0.995]])
INTERCEPT = np.array([[0.08, -0.05, 0.02], [1.5, -1.0, 2.0], [0.0, 0.01, -0.01]])
COVARS = np.array([np.diag([0.01, 0.02, 0.01]), np.diag([0.05, 0.03, 0.04]), np.diag([0.004, 0.006, 0.005])])
TRANSMAT = np.array([[0.985, 0.015, 0.0], [0.0, 0.98, 0.02], [0.0, 0.0, 1.0]])


def planted_ar_runs(n_runs=24, T=250, seed=0):
    """Runs sampled from a left-to-right AR-HMM: geometric dwell times, AR emissions."""
    rng = np.random.default_rng(seed)
    runs, paths = [], []
    for _ in range(n_runs):
        s = np.zeros(T, dtype=int)
        z = np.zeros((T, D))
        z[0] = rng.normal(0, 0.3, D)
        for t in range(1, T):
            s[t] = rng.choice(K, p=TRANSMAT[s[t - 1]])
            k = s[t]
            z[t] = COEF[k] * z[t - 1] + INTERCEPT[k] + rng.multivariate_normal(np.zeros(D), COVARS[k])
        runs.append(z)
        paths.append(s)
    return runs, paths


def planted_params():
    fam = get_family("ar")
    start = np.array([0.98, 0.01, 0.01])
    return fam.check({"startprob": start, "transmat": TRANSMAT + 1e-9, "means": np.zeros((K, D)), "covars": COVARS,
                      "coef": COEF, "intercept": INTERCEPT, "rate": np.zeros((K, D))}, "full")


def test_ar_density_is_the_conditional_normal_row_by_row():
    runs, _ = planted_ar_runs(n_runs=1, T=40)
    z = runs[0]
    params = planted_params()
    fam = get_family("ar")
    brute = np.zeros((len(z), K))
    for t in range(1, len(z)):
        for k in range(K):
            brute[t, k] = multivariate_normal(COEF[k] * z[t - 1] + INTERCEPT[k], COVARS[k]).logpdf(z[t])
    np.testing.assert_allclose(fam.log_density(params, z), brute, rtol=1e-10, atol=1e-10)
    model = fam.build(params, "full")
    np.testing.assert_allclose(model._compute_log_likelihood(z), brute, rtol=1e-10, atol=1e-10)
    # the model's log-likelihood is the forward algorithm over exactly these densities
    lb = brute.copy()
    alpha = np.log(params["startprob"]) + lb[0]
    with np.errstate(divide="ignore"):
        logA = np.log(params["transmat"])
    for t in range(1, len(z)):
        alpha = np.logaddexp.reduce(alpha[:, None] + logA, axis=0) + lb[t]
    assert model.score(z) == pytest.approx(np.logaddexp.reduce(alpha), rel=1e-10)


def test_ar_hmm_recovers_a_planted_ar_hmm_and_the_gaussian_hmm_does_not():
    runs, paths = planted_ar_runs()
    X, lengths = np.concatenate(runs), np.array([len(r) for r in runs])
    truth = np.concatenate(paths)
    ar = HMMSelector(max_states=5, restarts=3, family="ar", n_jobs=1, random_state=0).fit(X, lengths)
    assert ar.n_states_ == K
    assert adjusted_rand_score(truth, ar.predict(X, lengths)) > 0.95
    # canonical order is by first visit, which is the planted order here
    np.testing.assert_allclose(ar.params_["coef"], COEF, atol=0.08)
    np.testing.assert_allclose(ar.params_["intercept"][1], INTERCEPT[1], atol=0.25)
    np.testing.assert_allclose(np.diagonal(ar.params_["covars"], axis1=1, axis2=2),
                               np.diagonal(COVARS, axis1=1, axis2=2), rtol=0.3)
    # descriptive: the state's mean row and mean increment, as computed from the decoded truth
    for k in (0, 2):
        rows = [(z[t], z[t] - z[t - 1]) for z, s in zip(runs, paths) for t in range(1, len(z)) if s[t] == k]
        np.testing.assert_allclose(ar.params_["means"][k], np.mean([r[0] for r in rows], axis=0), atol=0.1)
        np.testing.assert_allclose(ar.params_["rate"][k], np.mean([r[1] for r in rows], axis=0), atol=0.01)
    gauss = HMMSelector(max_states=5, restarts=3, family="gaussian", n_jobs=1, random_state=0).fit(X, lengths)
    # drifting states are no places: the Gaussian HMM cuts them into stretches
    assert gauss.n_states_ > K
    assert adjusted_rand_score(truth, gauss.predict(X, lengths)) < 0.9


def test_gaussian_family_is_hmmlearns_gaussian_hmm():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 2))
    params = {"startprob": np.array([0.6, 0.4]), "transmat": np.array([[0.9, 0.1], [0.2, 0.8]]),
              "means": np.array([[0.0, 0.0], [1.0, -1.0]]),
              "covars": np.array([[[1.0, 0.2], [0.2, 0.5]], [[0.7, 0.0], [0.0, 1.3]]])}
    ref = GaussianHMM(2, covariance_type="full", init_params="", params="")
    ref.n_features = 2
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = (params[k] for k in ("startprob", "transmat", "means",
                                                                                  "covars"))
    fam = get_family("gaussian")
    assert fam.build(params, "full").score(X) == pytest.approx(ref.score(X), rel=1e-12)
    np.testing.assert_allclose(fam.log_density(params, X), ref._compute_log_likelihood(X), rtol=1e-10)
    # hmmlearn's own count of free scalars for a full-covariance HMM
    ref.n_features = 2
    assert fam.n_parameters(2, 2, "full") == sum(ref._get_n_fit_scalars_per_param().values())


@pytest.mark.parametrize("family", FAMILIES)
def test_parameters_round_trip_through_plain_data_and_permute(family):
    runs, _ = planted_ar_runs(n_runs=6, T=120, seed=1)
    X, lengths = np.concatenate(runs), np.array([len(r) for r in runs])
    sel = HMMSelector(max_states=3, restarts=1, family=family, n_jobs=1, random_state=0).fit(X, lengths)
    fam = get_family(family)
    saved = json.loads(json.dumps({k: np.asarray(v).tolist() for k, v in fam.payload(sel.params_).items()}))
    rebuilt = fam.build(saved, "full")
    assert rebuilt.score(X, lengths) == pytest.approx(sel.score(X, lengths), rel=1e-10)
    order = np.arange(sel.n_states_)[::-1]
    swapped = fam.build(fam.permute(sel.params_, order), "full")
    assert swapped.score(X, lengths) == pytest.approx(sel.score(X, lengths), rel=1e-10)
    np.testing.assert_array_equal(order[swapped.predict(X, lengths)], sel.predict(X, lengths))


def test_damaged_ar_parameters_are_refused_in_words():
    params = {k: np.asarray(v).tolist() for k, v in planted_params().items()}
    del params["coef"]
    with pytest.raises(UserError, match="missing or have inconsistent shapes"):
        get_family("ar").build(params, "full")
    with pytest.raises(UserError, match="unknown state family 'arx'; choose one of gaussian, ar, hamilton"):
        get_family("arx")


def test_importance_under_the_ar_family_is_the_gradient_of_its_filtered_posterior():
    """The gradient of log p(s_t = k | z_1..t) w.r.t. z_t, by central differences of a forward pass."""
    runs, paths = planted_ar_runs(n_runs=2, T=120, seed=2)
    params = planted_params()
    fam = get_family("ar")
    z, path = runs[0], paths[0]
    out = transition_importance([z], [path], params, ["a", "b", "c"], family="ar")
    times = np.flatnonzero(path[:-1] != path[1:])
    j, k = int(path[times[0]]), int(path[times[0] + 1])
    times = [int(t) for t in times if (path[t], path[t + 1]) == (j, k)]

    def log_filtered(zz, t):
        lb = fam.log_density(params, zz[: t + 1])
        a = np.log(params["startprob"]) + lb[0]
        with np.errstate(divide="ignore"):
            logA = np.log(params["transmat"])
        for s in range(1, t + 1):
            a = np.logaddexp.reduce(a[:, None] + logA, axis=0) + lb[s]
        return a[k] - np.logaddexp.reduce(a)

    grads = []
    for t in times:
        grad = np.zeros(D)
        for i in range(D):
            e = np.zeros_like(z)
            e[t, i] = 1e-6
            grad[i] = (log_filtered(z + e, t) - log_filtered(z - e, t)) / 2e-6
        grads.append(np.abs(grad))
    edge = next(e for e in out if (e["source"], e["target"]) == (j, k))
    assert edge["occurrences"] == len(times)
    got = {f["feature"]: f["importance"] for f in edge["features"]}
    np.testing.assert_allclose([got[c] for c in "abc"], np.mean(grads, axis=0), rtol=1e-4, atol=1e-6)


def test_fit_ids_of_gaussian_fits_are_those_before_families_existed():
    """Computed at commit a8654e7, before FitConfig had a family."""
    base = dict(metric="val_acc", threshold=0.95, direction="above", features=("a", "b"))
    assert fit_id(FitConfig(**base)) == "full-loglik-2feat-6b1e7cd9"
    assert fit_id(FitConfig.reference(**base)) == "full-bic-2feat-reference-bfc5b99c"
    assert fit_id(FitConfig(family="ar", **base)).startswith("full-loglik-2feat-ar-")


def test_fit_with_the_ar_family_end_to_end(tmp_path, capsys):
    detour_study(tmp_path / "data" / "toy", n_runs=12, T=90)
    store = tmp_path / "data"
    fast = ["--max-states", "3", "--restarts", "2", "--n-iter", "10", "--n-boot", "50", "--resamples", "3",
            "--jobs", "1"]
    assert main(["fit", "--store", str(store), "--family", "ar", *fast]) == 0
    fits = list((store / "toy" / "fits").iterdir())
    assert len(fits) == 1 and "-ar-" in fits[0].name
    model = json.loads((fits[0] / "model.json").read_text())
    assert model["family"] == "ar" and np.shape(model["coef"]) == (model["n_states"], len(model["features"]))
    assert "--family ar" in model["command"]
    assert main(["predict", "--store", str(store), "--fit", f"toy/{fits[0].name}", "toy:3"]) == 0
    capsys.readouterr()
    assert main(["fit", "--store", str(store), "--family", "arx", *fast]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--family" in err[0] and "gaussian, ar, hamilton" in err[0]


# --------------------------------------------------------------------------- Hamilton's switching mean

HK, HD = 3, 4
H_MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [3.0, -2.0, 1.0, 0.0], [5.0, 1.0, -2.0, 1.0]])
H_PHI = np.array([0.95, 0.9, 0.8, 0.97])
H_SD = 0.3
H_TRANS = np.array([[0.97, 0.03, 0.0], [0.0, 0.97, 0.03], [0.0, 0.0, 1.0]])


def planted_switching_runs(n_runs=20, T=150, seed=0, offset=0.0):
    """Runs of Hamilton's model sampled here: the deviation from the current state's mean is one
    AR(1) process through the run (each run starts at a deviation of ``offset`` stationary sds)."""
    rng = np.random.default_rng(seed)
    runs, paths = [], []
    stat_sd = H_SD / np.sqrt(1 - H_PHI**2)
    for _ in range(n_runs):
        s = np.zeros(T, dtype=int)
        for t in range(1, T):
            s[t] = rng.choice(HK, p=H_TRANS[s[t - 1]])
        dev = rng.normal(0, 0.2, HD) + offset * stat_sd * rng.choice([-1, 1], HD)
        z = np.zeros((T, HD))
        for t in range(T):
            if t:
                dev = H_PHI * dev + rng.normal(0, H_SD, HD)
            z[t] = H_MEANS[s[t]] + dev
        runs.append(z)
        paths.append(s)
    return runs, paths


def hamilton_params():
    return get_family("hamilton").check({
        "startprob": np.array([0.98, 0.01, 0.01]), "transmat": H_TRANS + 1e-12, "means": H_MEANS,
        "covars": np.array([np.eye(HD) * H_SD**2] * HK), "phi": H_PHI, "start_var": np.full(HD, 0.04)}, "full")


def test_hamilton_likelihood_is_the_forward_algorithm_over_pairs_by_brute_force():
    """log p(z) by summing over every state path of a short run, with the model's own densities
    written out from its definition (scipy's normal)."""
    from itertools import product

    runs, _ = planted_switching_runs(n_runs=1, T=6, seed=3)
    z = runs[0]
    p = hamilton_params()
    total = -np.inf
    for path in product(range(HK), repeat=len(z)):
        lp = np.log(p["startprob"][path[0]]) + multivariate_normal(p["means"][path[0]], np.diag(p["start_var"])
                                                                   ).logpdf(z[0])
        for t in range(1, len(z)):
            j, k = path[t - 1], path[t]
            if p["transmat"][j, k] <= 0:
                lp = -np.inf
                break
            centre = p["means"][k] + p["phi"] * (z[t - 1] - p["means"][j])
            lp += np.log(p["transmat"][j, k]) + multivariate_normal(centre, p["covars"][k]).logpdf(z[t])
        total = np.logaddexp(total, lp)
    fam = get_family("hamilton")
    assert fam.build(p, "full").score(z) == pytest.approx(total, rel=1e-9)
    # log_density is the one-step predictive density per state: the K-state forward filter over
    # it gives the same likelihood (what importance and predict rely on)
    lb = fam.log_density(p, z)
    a = np.log(p["startprob"]) + lb[0]
    with np.errstate(divide="ignore"):
        logA = np.log(p["transmat"])
    for t in range(1, len(z)):
        a = np.logaddexp.reduce(a[:, None] + logA, axis=0) + lb[t]
    assert np.logaddexp.reduce(a) == pytest.approx(total, rel=1e-9)


def test_hamilton_em_recovers_a_planted_switching_model_with_run_offsets():
    """Runs that sit 2 stationary sds off the state means for their whole length: the Gaussian
    HMM needs states for the offsets, Hamilton's model carries them in the AR deviation."""
    runs, paths = planted_switching_runs(n_runs=20, T=150, seed=0, offset=2.0)
    X, lengths = np.concatenate(runs), np.array([len(r) for r in runs])
    truth = np.concatenate(paths)
    fam = get_family("hamilton")
    start = fam.start_params(X, lengths, truth, HK)
    model = fam.new_model(HK, "full", n_iter=60, tol=1e-6)
    fam.set_params(model, start, "full")
    model.fit(X, lengths)
    history = np.array(model.monitor_.history)
    assert np.all(np.diff(history) > -1e-7 * np.abs(history).max())  # EM climbs (ECM: every block exact)
    fitted = fam.to_params(model)
    np.testing.assert_allclose(fitted["phi"], H_PHI, atol=0.03)
    order = np.argsort(fitted["means"][:, 0])
    np.testing.assert_allclose(fitted["means"][order], H_MEANS, atol=0.6)
    assert adjusted_rand_score(truth, model.predict(X, lengths)) > 0.95
    sel = HMMSelector(max_states=5, restarts=2, family="hamilton", n_jobs=1, random_state=0).fit(X, lengths)
    assert sel.n_states_ == HK
    gauss = HMMSelector(max_states=5, restarts=2, n_jobs=1, random_state=0).fit(X, lengths)
    assert gauss.n_states_ > HK  # the offsets cost the place model extra states


def _random_hamilton(K, d, rng, zeros=True):
    trans = rng.dirichlet(np.ones(K), size=K)
    if zeros:  # impossible transitions, as a left-to-right chain has
        trans[np.triu_indices(K, 2)] = 0.0
        trans /= trans.sum(axis=1, keepdims=True)
    a = rng.normal(size=(K, d, d))
    return get_family("hamilton").check({
        "startprob": rng.dirichlet(np.ones(K)), "transmat": trans, "means": rng.normal(0, 2, (K, d)),
        "covars": np.einsum("kab,kcb->kac", a, a) + 0.5 * np.eye(d), "phi": rng.uniform(0, 0.99, d),
        "start_var": rng.uniform(0.5, 2, d)}, "full")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hamilton_structured_pair_chain_equals_hmmlearns_dense_algorithms(seed):
    """The O(T·K²) forward-backward, expected transitions and Viterbi on the pair chain give what
    hmmlearn's own dense O(T·K⁴) routines give on the same K² pair states (runs of unequal length,
    batched by length; a start probability and transitions of 0 included)."""
    from hmmlearn import _hmmc

    from latent.switching import pair_index

    rng = np.random.default_rng(seed)
    K, d = 4, 3
    p = _random_hamilton(K, d, rng)
    p["startprob"][1] = 0.0
    p["startprob"] /= p["startprob"].sum()
    model = get_family("hamilton").build(p, "full")
    lengths = [30, 1, 30, 17, 2]
    X = rng.normal(0, 2, (sum(lengths), d))
    with np.errstate(divide="ignore"):
        start, trans = np.log(model.startprob_), np.log(model.transmat_)
    off = np.concatenate([[0], np.cumsum(lengths)])
    want_ll, want_post, want_counts, want_paths = 0.0, [], np.zeros((K, K)), []
    prev, cur = pair_index(K)
    for i in range(len(lengths)):
        lat = model._compute_log_likelihood(X[off[i]:off[i + 1]])
        ll, fwd = _hmmc.forward_log(model.startprob_, model.transmat_, lat)
        bwd = _hmmc.backward_log(model.startprob_, model.transmat_, lat)
        want_ll += ll
        g = fwd + bwd
        want_post.append(np.exp(g - np.logaddexp.reduce(g, axis=1, keepdims=True)))
        if lengths[i] > 1:
            xi = np.exp(_hmmc.compute_log_xi_sum(fwd, model.transmat_, bwd, lat))  # (K², K²)
            for a in range(K * K):
                for b in range(K * K):
                    if cur[a] == prev[b]:
                        want_counts[cur[a], cur[b]] += xi[a, b]
        vl, vp = _hmmc.viterbi(model.startprob_, model.transmat_, lat)
        want_paths.append((vl, vp))
    ll, post = model._score(X, lengths, compute_posteriors=True)
    assert ll == pytest.approx(want_ll, rel=1e-10)
    np.testing.assert_allclose(post, np.concatenate(want_post), atol=1e-9)
    assert model.score(X, lengths) == pytest.approx(want_ll, rel=1e-10)
    model.params = "stmac"  # build() freezes them; EM's statistics need them
    model.n_features = d
    stats, ll2 = model._do_estep(X, lengths)
    assert ll2 == pytest.approx(want_ll, rel=1e-10)
    np.testing.assert_allclose(stats["counts"], want_counts, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(stats["start"], sum(w[0] for w in want_post), atol=1e-9)
    for i, (vl, vp) in enumerate(want_paths):
        got_l, got_p = model._decode_viterbi(X[off[i]:off[i + 1]])
        assert got_l == pytest.approx(vl, rel=1e-10)
        np.testing.assert_array_equal(got_p, vp)
    assert start[0] > -np.inf and trans.max() <= 0


def test_hamilton_em_climbs_on_smooth_runs_whose_innovations_are_tiny():
    """Runs that move smoothly (innovation variance 5e-4; the drifting planted studies measure 0.003
    in z units, and a study's smoothest features less): EM climbs at every iteration and the fitted
    innovation variances are the runs' own. A fixed covariance floor of 1e-3 tripled them (and on a
    realistic planted study EM lost likelihood); the floor is now relative to the runs' one-step
    changes."""
    rng = np.random.default_rng(5)
    K, d = 3, 4
    p = get_family("hamilton").check({
        "startprob": np.array([1.0, 0.0, 0.0]), "transmat": np.array([[0.98, 0.02, 0], [0, 0.98, 0.02], [0, 0, 1.0]]),
        "means": np.array([[0.0] * d, [1.0, -1.0, 0.5, 0.0], [2.0, 0.0, -0.5, 1.0]]),
        "covars": np.array([np.eye(d) * 5e-4] * K), "phi": np.full(d, 0.98), "start_var": np.full(d, 0.01)}, "full")
    fam = get_family("hamilton")
    runs, paths = fam.sample(p, [200] * 20, rng)
    X, lengths = np.concatenate(runs), np.array([200] * 20)
    model = fam.new_model(K, "full", n_iter=40, tol=1e-9)
    fam.set_params(model, fam.start_params(X, lengths, np.concatenate(paths), K), "full")
    model.fit(X, lengths)
    history = np.array(model.monitor_.history)
    assert len(history) >= 2
    assert np.all(np.diff(history) > -1e-7 * np.abs(history).max()), np.diff(history)
    fitted = fam.to_params(model)
    np.testing.assert_allclose(np.diagonal(fitted["covars"], axis1=1, axis2=2), 5e-4, rtol=0.25)  # not the floor


def test_damaged_hamilton_parameters_are_refused_in_words():
    params = {k: np.asarray(v).tolist() for k, v in hamilton_params().items()}
    params["phi"][0] = 1.2
    with pytest.raises(UserError, match="AR coefficient outside"):
        get_family("hamilton").build(params, "full")
