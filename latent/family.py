"""The model-family seam: what every kind of latent-state model owns, and the registry of families.

Notation: K states, d features, one run ``z`` of T scaled rows.

Every family is an HMM over the same rows and run lengths (the state sequence is Markov with
``startprob`` and ``transmat``); what differs is the *emission*, the law of a row given its state.
A family owns, behind one interface (:class:`StateFamily`):

* construction of its hmmlearn model (``hmmlearn.base.BaseHMM`` is the engine for all of them) and
  EM's start from a hard labelling of rows (:meth:`StateFamily.start_params`);
* its parameters as plain arrays (:meth:`~StateFamily.to_params`, :meth:`~StateFamily.build`,
  validated and repaired on the way in), their names and shapes, and their count;
* per-state densities and their gradients for one run (:meth:`~StateFamily.centers`,
  :meth:`~StateFamily.log_density`), which filtering, feature importance and forecasts use;
* relabelling (:meth:`~StateFamily.permute`).

Every family's parameters hold ``means`` (K, d): where runs are in each state, in z units. For the
Gaussian HMM it is the emission mean; for families whose states are regimes of change it is the
posterior-weighted mean of the rows in the state. Maps, profiles, stability matching and the
dissimilarity's ground metric read only ``means``, so they work for every family unchanged.

Adding a family: a module with its hmmlearn model and a :class:`StateFamily` subclass, one line in
:data:`FAMILY_MODULES`, and docs/fit.md.
"""

from __future__ import annotations

import importlib

import numpy as np

from .errors import UserError

#: covariance structures every family supports (of its emission noise)
COVARIANCES = ("full", "diag", "spherical", "tied")
#: smallest eigenvalue a saved covariance may have, relative to its largest (and absolute, in
#: z units): below it a covariance is numerically singular and Cholesky fails on reload
COVAR_FLOOR = 1e-6
#: family name -> "module:class"
FAMILY_MODULES = {
    "gaussian": "latent.gaussian:GaussianFamily",
    "ar": "latent.autoregressive:ARFamily",
    "hamilton": "latent.switching:SwitchingFamily",
}
FAMILIES = tuple(FAMILY_MODULES)
#: what a state is in each family, in a few words (reports, summaries)
FAMILY_WORDS = {"gaussian": "a state is a place", "ar": "a state is a regime of change",
                "hamilton": "a state is a place the run wanders near"}
DEFAULT_FAMILY = "gaussian"


def get_family(name: str) -> "StateFamily":
    """The family called ``name`` (see :data:`FAMILIES`)."""
    if name not in FAMILY_MODULES:
        raise UserError(f"unknown state family {name!r}; choose one of {', '.join(FAMILIES)}")
    module, cls = FAMILY_MODULES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def repair_covars(covars: np.ndarray, floor: float = COVAR_FLOOR) -> np.ndarray:
    """Symmetric positive-definite copies of ``covars`` (K, d, d).

    Each matrix is symmetrised and its eigenvalues raised to at least ``floor`` times its
    largest (and at least ``floor``). A matrix that is already well conditioned comes back
    unchanged (bit for bit), so repairing never moves a healthy fit.
    """
    covars = np.array(covars, dtype=float)
    out = np.empty_like(covars)
    for k, cv in enumerate(covars):
        if not np.all(np.isfinite(cv)):
            raise ValueError("non-finite covariance")
        sym = (cv + cv.T) / 2
        w, v = np.linalg.eigh(sym)
        low = max(floor, floor * float(w.max()) if w.max() > 0 else floor)
        if np.array_equal(sym, cv) and w.min() >= low:
            out[k] = cv
        else:
            out[k] = (v * np.maximum(w, low)) @ v.T
            out[k] = (out[k] + out[k].T) / 2
    return out


def covariance_count(k: int, d: int, covariance_type: str) -> int:
    """Free parameters of K noise covariances of the given structure (hmmlearn 0.3's count)."""
    return {
        "full": k * d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
        "tied": d * (d + 1) // 2,
    }[covariance_type]


def reduce_covars(full: np.ndarray, covariance_type: str, weight: np.ndarray | None = None) -> np.ndarray:
    """Full covariances (K, d, d) in the storage shape hmmlearn uses for ``covariance_type``.

    ``tied`` averages the states' matrices weighted by ``weight`` (their expected rows; equal
    weights when None).
    """
    if covariance_type == "full":
        return full
    if covariance_type == "diag":
        return np.array([np.diag(c) for c in full])
    if covariance_type == "spherical":
        return np.array([np.mean(np.diag(c)) for c in full])
    if weight is None:
        return full.mean(axis=0)
    w = np.asarray(weight, dtype=float)
    w = w / w.sum() if w.sum() > 0 else np.full(len(full), 1 / len(full))
    return np.einsum("k,kij->ij", w, full)


def expand_covars(stored: np.ndarray, covariance_type: str, k: int, d: int) -> np.ndarray:
    """Full ``(K, d, d)`` covariances from hmmlearn's storage shape for ``covariance_type``."""
    stored = np.asarray(stored, dtype=float)
    if covariance_type == "full":
        return stored
    if covariance_type == "diag":
        return np.array([np.diag(v) for v in stored.reshape(k, d)])
    if covariance_type == "spherical":
        return np.array([v * np.eye(d) for v in stored.reshape(k, -1)[:, 0]])
    return np.broadcast_to(stored, (k, d, d)).copy()


class StateFamily:
    """The interface of a model family (see the module docstring). Subclasses set the class
    attributes and implement the methods that raise ``NotImplementedError``.

    Attributes
    ----------
    name : str
        The family's name in configs, fit ids and ``model.json``.
    param_names : tuple of str
        Keys of the plain-data parameters (``startprob``, ``transmat`` and ``means`` always).
    emission_codes : str
        hmmlearn ``params`` letters of the emission parameters (EM updates ``"st"`` plus these).
    description : str
        One line: what a state is in this family.
    """

    name = ""
    param_names: tuple[str, ...] = ("startprob", "transmat", "means", "covars")
    emission_codes = ""
    description = ""

    # -- construction and EM ---------------------------------------------------------------

    def new_model(self, k: int, covariance_type: str, *, n_iter: int = 10, tol: float = 1e-2,
                  random_state=None, implementation: str = "log"):
        """An unfitted hmmlearn model of this family (``init_params=""``: parameters are set)."""
        raise NotImplementedError

    def start_params(self, X: np.ndarray, lengths, labels: np.ndarray, k: int) -> dict:
        """Parameters estimated from a hard labelling of the rows (where EM starts)."""
        raise NotImplementedError

    def set_params(self, model, params: dict, covariance_type: str) -> None:
        """Put plain-data ``params`` (full covariances) into ``model``."""
        raise NotImplementedError

    def to_params(self, model) -> dict:
        """A fitted model's parameters as plain arrays; covariances always full ``(K, d, d)``."""
        raise NotImplementedError

    def n_parameters(self, k: int, d: int, covariance_type: str) -> int:
        """Free parameters of a K-state model (the count the AIC/BIC penalties use)."""
        raise NotImplementedError

    # -- densities for one run -------------------------------------------------------------

    def centers(self, params: dict, z: np.ndarray) -> np.ndarray:
        """E[z_t | s_t = k, the rows before t], shape (T, K, d)."""
        raise NotImplementedError

    def scored_rows(self, z: np.ndarray) -> np.ndarray:
        """Mask of the rows whose emission density the family scores (others count as 1)."""
        return np.ones(len(z), dtype=bool)

    def log_density(self, params: dict, z: np.ndarray) -> np.ndarray:
        """log p(z_t | s_t = k, the rows before t), shape (T, K); 0 on rows not scored."""
        centers = self.centers(params, z)
        covars = np.asarray(params["covars"], dtype=float)
        T, K, d = centers.shape
        out = np.zeros((T, K))
        rows = self.scored_rows(z)
        for h in range(K):
            chol = np.linalg.cholesky(covars[h])
            diff = np.linalg.solve(chol, (z[rows] - centers[rows, h]).T)  # (d, T)
            logdet = 2 * np.log(np.diag(chol)).sum()
            out[rows, h] = -0.5 * (d * np.log(2 * np.pi) + logdet + (diff**2).sum(axis=0))
        return out

    # -- plain data --------------------------------------------------------------------------

    def check(self, params: dict, covariance_type: str) -> dict:
        """Validated, repaired float arrays of ``params`` (from a fit or a saved ``model.json``).

        Probabilities are renormalised and covariances made symmetric positive definite, so a
        model that was fitted always rebuilds; anything beyond repair raises :class:`UserError`.
        """
        try:
            out = {name: np.asarray(params[name], dtype=float) for name in self.param_names}
            k, d = out["means"].shape
            ok = (out["covars"].shape == (k, d, d) and out["startprob"].shape == (k,)
                  and out["transmat"].shape == (k, k)
                  and all(out[n].shape == s for n, s in self.extra_shapes(k, d).items()))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"saved {self.name} HMM parameters are missing or have inconsistent shapes; "
                            "refit with `latent fit`")
        start, trans = out["startprob"], out["transmat"]
        if not all(np.all(np.isfinite(a)) for a in out.values()) or np.any(start < 0) or np.any(trans < 0):
            raise UserError("saved HMM parameters hold negative or non-finite values; refit with `latent fit`")
        if start.sum() <= 0 or np.any(trans.sum(axis=1) <= 0):
            raise UserError("saved HMM parameters hold an all-zero probability row; refit with `latent fit`")
        if covariance_type not in COVARIANCES:
            raise UserError(f"unknown covariance type {covariance_type!r}")
        out["startprob"] = start / start.sum()
        out["transmat"] = trans / trans.sum(axis=1, keepdims=True)
        out["covars"] = repair_covars(out["covars"])
        return out

    def extra_shapes(self, k: int, d: int) -> dict:
        """Shapes of the parameters beyond ``startprob, transmat, means, covars``."""
        return {}

    def build(self, params: dict, covariance_type: str, implementation: str = "log"):
        """A ready-to-use model from :meth:`to_params` output (or ``model.json`` fields)."""
        clean = self.check(params, covariance_type)
        model = self.new_model(len(clean["startprob"]), covariance_type, implementation=implementation)
        model.params = ""
        self.set_params(model, clean, covariance_type)
        return model

    def permute(self, params: dict, order) -> dict:
        """Reorder states: new state i is old state ``order[i]``."""
        order = np.asarray(order)
        out = {}
        for name in self.param_names:
            arr = np.asarray(params[name])
            out[name] = arr[np.ix_(order, order)] if name == "transmat" else arr[order]
        return out

    def payload(self, params: dict) -> dict:
        """The family's entries of ``model.json`` (every parameter, by name)."""
        return {name: params[name] for name in self.param_names}

    # -- simulation --------------------------------------------------------------------------

    def sample(self, params: dict, lengths, rng: np.random.Generator, first_rows=None) -> tuple[list, list]:
        """Runs drawn from the model: ``(runs_z, runs_path)``, one (T_i, d) array and one (T_i,)
        state path per entry of ``lengths``.

        The state paths follow ``startprob`` and ``transmat``; rows follow :meth:`emit`, run by
        run in lockstep. ``first_rows`` (N, d): rows to start from for families whose likelihood
        is conditional on a run's first row (``ar``); others draw their own.
        """
        lengths = np.asarray(lengths, dtype=int)
        N, T = len(lengths), int(lengths.max()) if len(lengths) else 0
        start = np.asarray(params["startprob"], dtype=float)
        trans = np.asarray(params["transmat"], dtype=float)
        K, d = np.shape(params["means"])
        cum = np.cumsum(trans, axis=1)
        paths = np.zeros((N, T), dtype=int)
        paths[:, 0] = rng.choice(K, size=N, p=start / start.sum())
        for t in range(1, T):
            u = rng.random(N)
            paths[:, t] = np.minimum((u[:, None] > cum[paths[:, t - 1]]).sum(axis=1), K - 1)
        chol = np.linalg.cholesky(np.asarray(params["covars"], dtype=float))
        z = np.zeros((N, T, d))
        for t in range(T):
            noise = np.einsum("nij,nj->ni", chol[paths[:, t]], rng.standard_normal((N, d)))
            z[:, t] = self.emit(params, paths[:, t - 1] if t else None, paths[:, t],
                                z[:, t - 1] if t else None, noise, rng, first_rows)
        return [z[i, :n] for i, n in enumerate(lengths)], [paths[i, :n] for i, n in enumerate(lengths)]

    def emit(self, params: dict, prev_state, state, prev_row, noise, rng, first_rows=None) -> np.ndarray:
        """Rows (N, d) at one step for N runs in ``state`` (``prev_*`` None at t = 0); ``noise`` is
        drawn from each run's state covariance. The Gaussian HMM's: mean + noise."""
        return np.asarray(params["means"], dtype=float)[state] + noise
