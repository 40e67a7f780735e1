"""Property test: every random valid study ends in a fit or in one clear error line, never a traceback.

Studies are drawn from a seeded generator that mixes the shapes that broke fits before: constant,
duplicated, near-duplicated, huge-valued and integer features, 2-6 runs, runs of 5 checkpoints,
runs with NaN, unequal lengths (with --allow-partial), one state dominating.
"""

import numpy as np
import pandas as pd
import pytest

from latent.cli import main
from latent.store import atomic_write_json, atomic_write_parquet, run_stem

FAST = ["--max-states", "4", "--restarts", "2", "--n-iter", "8", "--n-boot", "20", "--resamples", "2",
        "--jobs", "1", "-q"]


def random_study(root, rng):
    n_runs = int(rng.choice([2, 3, 4, 6, 12]))
    T = int(rng.choice([5, 8, 30, 120]))
    d = int(rng.integers(1, 7))
    kinds = rng.choice(["normal", "constant", "duplicate", "near_duplicate", "huge", "integer", "tiny"], d)
    (root / "runs").mkdir(parents=True)
    runs = {}
    for s in range(n_runs):
        T_s = T if rng.random() < 0.8 else max(2, T - int(rng.integers(1, 4)))
        state = (np.arange(T_s) > rng.integers(0, T_s)).astype(int)
        if rng.random() < 0.2:
            state[:] = 0  # one state dominating
        cols = {}
        base = state * 3.0 + rng.normal(size=T_s)
        for j, kind in enumerate(kinds):
            noise = rng.normal(size=T_s)
            cols[f"f{j}"] = {
                "normal": base + noise,
                "constant": np.full(T_s, 1.5),
                "duplicate": base,
                "near_duplicate": base + 1e-12 * noise,
                "huge": (base + noise) * 1e200,
                "integer": np.round(base),
                "tiny": (base + noise) * 1e-200,
            }[kind]
        frame = pd.DataFrame({"seed": s, "step": np.arange(T_s) * 10, **cols})
        frame["val_acc"] = np.where(np.arange(T_s) >= T_s // 2, 0.95, 0.5) if rng.random() < 0.9 else 0.5
        if rng.random() < 0.1:
            frame.loc[int(rng.integers(0, T_s)), "f0"] = np.nan
        runs[s] = frame
        atomic_write_parquet(root / "runs" / f"{run_stem(s)}.parquet", frame)
    atomic_write_json(root / "study.json", {"task": "fuzz", "features": [f"f{j}" for j in range(d)],
                                            "convergence": {"metric": "val_acc", "threshold": 0.9}})
    return kinds


@pytest.mark.parametrize("case", range(24))
def test_random_study_fits_or_fails_cleanly(tmp_path, capsys, case):
    rng = np.random.default_rng(1000 + case)
    root = tmp_path / "data" / "fuzz"
    kinds = random_study(root, rng)
    extra = ["--allow-partial"] if rng.random() < 0.5 else []
    if rng.random() < 0.3:
        extra += ["--covariance", str(rng.choice(["diag", "spherical", "tied"]))]
    rc = main(["fit", "--store", str(tmp_path / "data"), *FAST, *extra])  # a traceback fails the test
    out, err = capsys.readouterr()
    if rc == 0:
        fit_dir = out.strip().splitlines()[-1]
        assert (tmp_path / "data" / "fuzz" / "fits").exists() and fit_dir.endswith(tuple(
            p.name for p in (root / "fits").iterdir())), (kinds, out)
    else:
        assert rc == 2, (kinds, rc, err)
        errors = [line for line in err.splitlines() if line.startswith("latent fit: error:")]
        assert len(errors) == 1, (kinds, err)
        assert not (root / "fits").exists() or not any((root / "fits").iterdir())


def test_constant_and_near_duplicate_features_fit(tmp_path, capsys):
    """The case that ended in hmmlearn's 'covars must be symmetric, positive-definite' on reload."""
    from latent.fit import load_fit
    from latent.hmm import build_hmm
    from latent.simulate import SimConfig, simulate, write_study

    table, truth = simulate(SimConfig(n_main=3, detours=1, n_runs=12, n_checkpoints=60, n_features=4, seed=3))
    table["l1"] = 7.0  # constant
    table["trace"] = table["l2"] + 1e-13 * np.random.default_rng(0).normal(size=len(table))  # near duplicate
    write_study(tmp_path / "data" / "s", table, truth)
    rc = main(["fit", "--store", str(tmp_path / "data"), *FAST[:-1]])
    out, err = capsys.readouterr()
    assert rc == 0, err
    fit_dir = next((tmp_path / "data" / "s" / "fits").iterdir())
    model, _, _ = load_fit(fit_dir)
    hmm = build_hmm(model, model["covariance_type"])
    covars = np.array(model["covars"])
    assert np.all(np.linalg.eigvalsh(covars) > 0)
    assert np.isfinite(hmm.score(np.zeros((3, len(model["features"])))))
