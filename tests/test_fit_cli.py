"""`latent fit` end to end: artifacts, determinism, `latent ls`, bad input, no torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latent.cli import main
from planted import detour_study

FAST = ["--max-states", "3", "--restarts", "2", "--n-iter", "10", "--n-boot", "50", "--resamples", "4",
        "--jobs", "2"]


@pytest.fixture()
def store(tmp_path):
    detour_study(tmp_path / "data" / "toy", n_runs=12, T=90)
    return tmp_path / "data"


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def fit(store, *extra):
    return main(["fit", "--store", str(store), *FAST, *extra])


def test_fit_writes_contract_artifacts_and_ls_lists_them(store, capsys):
    assert fit(store) == 0
    out = capsys.readouterr().out
    assert "K = " in out and "R² = " in out and "detour states (delay rule):" in out and "state 0: occupancy" in out
    assert "folds choose it" in out and "resamples" in out
    fits = list((store / "toy" / "fits").iterdir())
    assert len(fits) == 1 and not fits[0].name.startswith(".")
    fdir = fits[0]
    assert oct(fdir.stat().st_mode & 0o777) != "0o700"
    model = json.loads((fdir / "model.json").read_text())
    for key in ("format", "fit_id", "study", "config", "n_states", "criterion", "features", "covariance_type",
                "startprob", "transmat", "means", "covars", "scaling", "selection", "restarts", "final_restarts",
                "seeds", "state_order", "versions", "command"):
        assert key in model, key
    K, d = model["n_states"], len(model["features"])
    assert model["format"] == "latent.fit/1" and model["fit_id"] == fdir.name and model["study"] == "toy"
    assert np.array(model["covars"]).shape == (K, d, d) and np.array(model["transmat"]).shape == (K, K)
    assert [r["k"] for r in model["selection"]] == [1, 2, 3]
    assert all(len(r["random_states"]) == 2 * 5 for r in model["selection"])  # 2 restarts in each of 5 folds
    assert sorted(s for fold in model["seeds"]["folds"] for s in fold) == model["seeds"]["used"] == list(range(12))
    paths = pd.read_parquet(fdir / "paths.parquet")
    assert list(paths.columns) == ["seed", "step", "state"] + [f"p_state_{k}" for k in range(K)]
    assert len(paths) == 12 * 90
    np.testing.assert_allclose(paths[[f"p_state_{k}" for k in range(K)]].sum(axis=1), 1)
    analysis = json.loads((fdir / "analysis.json").read_text())
    for key in ("format", "convergence", "occupancy", "map", "states", "regression", "detours", "detour_rule",
                "selection", "stability", "dissimilarity", "importance", "warnings"):
        assert key in analysis, key
    assert [r["state"] for r in analysis["states"]] == list(range(K))
    assert analysis["stability"]["resamples"] == 4 and len(analysis["stability"]["state_found"]) == K
    assert "edges" in analysis["map"] and "nodes" in analysis["map"]
    assert [r["state"] for r in analysis["phases"]["states"]] == list(range(K))
    assert analysis["phases"]["metrics"] == ["val_acc"]  # the only performance column these tables have
    # the fit id names the settings that differ from the defaults (FAST) and the 4 non-reference features
    assert fdir.name.startswith("full-loglik-4feat-max3-restarts2-iter10-boot50-resamples4-")
    # the last line says what to run next, and that command works
    last = out.strip().splitlines()[-1]
    assert last == f"next: latent report --store {store} --study toy --fit {fdir.name}"
    assert main(last.split()[2:]) == 0
    assert (store / "toy" / "reports" / fdir.name / "index.html").exists()
    assert main(["ls", "--store", str(store)]) == 0
    assert fdir.name in capsys.readouterr().out


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "fit id names the settings" in out
    assert "``" not in out and ":func:" not in out and ":class:" not in out


def test_same_command_same_bytes_and_replaces_atomically(store, capsys):
    assert fit(store) == 0
    fdir = next((store / "toy" / "fits").iterdir())
    first = {n: (fdir / n).read_bytes() for n in ("model.json", "analysis.json", "paths.parquet")}
    assert fit(store) == 0
    assert [p.name for p in (store / "toy" / "fits").iterdir()] == [fdir.name]  # replaced, no leftovers
    for name, data in first.items():
        assert (fdir / name).read_bytes() == data, name
    # different settings, different fit id
    assert fit(store, "--covariance", "diag") == 0
    assert len(list((store / "toy" / "fits").iterdir())) == 2


def test_nan_run_is_excluded_with_a_warning(store, capsys):
    path = store / "toy" / "runs" / "seed-005.parquet"
    frame = pd.read_parquet(path)
    frame.loc[3, "f1"] = np.nan
    frame.to_parquet(path, index=False)
    assert fit(store) == 0
    err = capsys.readouterr().err
    assert "seed 5: non-finite values in f1" in err
    fdir = next((store / "toy" / "fits").iterdir())
    model = json.loads((fdir / "model.json").read_text())
    assert 5 not in model["seeds"]["used"] and model["seeds"]["excluded"] == {"5": "non-finite values in f1"}


def _bad(store, capsys, argv):
    before = snapshot(store)
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("latent fit: error:"), err
    assert snapshot(store) == before
    return err


def test_bad_input_is_one_line_exit_2_store_unchanged(store, capsys):
    s = str(store)
    assert "not found" in _bad(store, capsys, ["fit", "--store", s, "--study", "nope", *FAST])
    assert "unknown feature(s) zz; available:" in _bad(store, capsys, ["fit", "--store", s, "--features", "f0,zz", *FAST])
    assert "--max-states" in _bad(store, capsys, ["fit", "--store", s, *FAST, "--max-states", "0"])
    err = _bad(store, capsys, ["fit", "--store", s, *FAST, "--threshold", "0.99"])
    assert "no run ever has val_acc > 0.99" in err
    assert "--metric" in _bad(store, capsys, ["fit", "--store", s, *FAST, "--metric", "nothing"])
    (store / "toy" / "runs" / "seed-003.parquet").write_bytes(b"not a parquet file")
    assert "corrupt" in _bad(store, capsys, ["fit", "--store", s, *FAST])


def test_missing_and_empty_study(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    assert "no study in store" in _bad(empty, capsys, ["fit", "--store", str(empty)])
    (empty / "bare" / "runs").mkdir(parents=True)
    (empty / "bare" / "study.json").write_text(json.dumps({"task": "x", "features": ["f0"],
                                                           "convergence": {"metric": "val_acc", "threshold": 0.9}}))
    assert "has no runs" in _bad(empty, capsys, ["fit", "--store", str(empty), "--study", "bare"])


def test_too_few_runs(tmp_path, capsys):
    detour_study(tmp_path / "data" / "two", n_runs=2, T=90)
    err = _bad(tmp_path / "data", capsys, ["fit", "--store", str(tmp_path / "data"), *FAST])
    assert "too few runs for cross-validation" in err
    err = _bad(tmp_path / "data", capsys, ["fit", "--store", str(tmp_path / "data"), *FAST, "--reference"])
    assert "too few runs for the held-out split" in err


def test_study_by_path_and_fit_does_not_import_torch(store):
    code = (
        "import sys\n"
        "from latent.cli import main\n"
        f"rc = main(['fit', '--study', {str(store / 'toy')!r}, '-q', *{FAST!r}])\n"
        "assert rc == 0, rc\n"
        "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=store.parent,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "NOTORCH"
    assert Path(lines[0]).parent == store / "toy" / "fits"


def test_saved_model_reproduces_saved_paths(store, capsys):
    """model.json alone (no pickle) rebuilds the HMM; with the saved scaling it decodes paths.parquet."""
    from latent.fit import load_fit
    from latent.hmm import build_hmm

    assert fit(store) == 0
    fdir = next((store / "toy" / "fits").iterdir())
    model, paths, analysis = load_fit(fdir)
    hmm = build_hmm(model, model["covariance_type"])
    for seed in model["seeds"]["used"][:4]:
        run = pd.read_parquet(store / "toy" / "runs" / f"seed-{seed:03d}.parquet").head(model["config"]["first_n"])
        sc = model["scaling"]
        z = (run[model["features"]].to_numpy() - np.array(sc["mean"])) / np.array(sc["std"])
        saved = paths[paths.seed == seed]
        np.testing.assert_array_equal(hmm.predict(z), saved["state"].to_numpy())
        np.testing.assert_array_equal(saved["step"].to_numpy(), run["step"].to_numpy())
    # canonical order: most runs start in state 0
    starts = paths.groupby("seed")["state"].first()
    assert (starts == 0).mean() > 0.5
    # the map's edge counts agree with paths.parquet
    pairs = {}
    for seed, g in paths.groupby("seed"):
        s = g["state"].to_numpy()
        for e in {(int(a), int(b)) for a, b in zip(s[:-1], s[1:]) if a != b}:
            pairs[e] = pairs.get(e, 0) + 1
    assert {(e["source"], e["target"]): e["runs"] for e in analysis["map"]["edges"]} == pairs


@pytest.mark.parametrize("rule,n_used", [("exclude", 11), ("restrict", 12)])
def test_nonconverged_rule(store, capsys, rule, n_used):
    path = store / "toy" / "runs" / "seed-004.parquet"
    frame = pd.read_parquet(path)
    frame["val_acc"] = 0.5
    frame.to_parquet(path, index=False)
    assert fit(store, "--nonconverged", rule) == 0
    assert "1 of 12 run(s) never reach val_acc > 0.9: seeds 4" in capsys.readouterr().err
    fdir = next((store / "toy" / "fits").iterdir())
    analysis = json.loads((fdir / "analysis.json").read_text())
    assert analysis["convergence"]["never_converged"] == [4]
    assert analysis["convergence"]["times"]["4"] is None
    assert analysis["convergence"]["tau"] == 890  # the last step of every run (90 checkpoints, every 10)
    assert analysis["regression"]["n_runs"] == n_used
    assert sum(r["runs_visiting"] + r["runs_skipping"] for r in analysis["states"][:1]) == n_used
    assert rule in json.loads((fdir / "model.json").read_text())["config"]["nonconverged"]
    assert any("never reach" in w for w in analysis["warnings"])  # warnings reach the artifacts


def test_partial_study_is_refused_unless_allowed(store, capsys):
    manifest = store / "toy" / "runs" / "seed-003.json"
    manifest.write_text(json.dumps({"format": "latent.run/1", "seed": 3, "status": "running"}))
    path = store / "toy" / "runs" / "seed-007.parquet"
    pd.read_parquet(path).head(60).to_parquet(path, index=False)
    err = _bad(store, capsys, ["fit", "--store", str(store), *FAST])
    assert "partial: seed(s) 3 (90 rows saved)" in err
    assert "seed(s) 7 have fewer checkpoints than the others (60 vs 90)" in err
    assert "--allow-partial" in err
    assert fit(store, "--allow-partial") == 0
    assert "fitting a partial study" in capsys.readouterr().err
    fdir = next((store / "toy" / "fits").iterdir())
    assert any("partial" in w for w in json.loads((fdir / "analysis.json").read_text())["warnings"])


def test_reference_procedure_is_one_flag(store, capsys):
    assert fit(store, "--reference") == 0
    out = capsys.readouterr().out
    assert "held-out (mean over restarts, the reference)" in out and "paper rule" in out
    model = json.loads(next((store / "toy" / "fits").iterdir()).joinpath("model.json").read_text())
    cfg = model["config"]
    assert (cfg["scaling"], cfg["selection"], cfg["init"], cfg["detour_rule"]) == ("per_run", "reference", "kmeans",
                                                                                  "paper")
    assert cfg["max_states"] == 3  # other flags still apply
    assert len(model["seeds"]["test"]) == 3 and "per_run" in model["scaling"]


def test_k_at_the_top_of_the_range_is_warned(store, capsys):
    assert fit(store, "--max-states", "2") == 0
    err = capsys.readouterr().err
    assert "is the largest number of states searched" in err and "raise --max-states" in err


def test_one_state_of_pure_noise_is_k1_with_a_warning_that_says_what_to_try(tmp_path, capsys):
    # Runs of i.i.d. noise have no phases: held-out likelihood must prefer K = 1, and say why it might.
    from planted import run_table, write_study

    rng = np.random.default_rng(0)
    feats = ["f0", "f1", "f2"]
    runs = {s: run_table(s, rng.standard_normal((60, 3)), feats, val_acc=np.r_[np.zeros(30), np.ones(30)])
            for s in range(10)}
    write_study(tmp_path / "data" / "noise", runs, features=feats)
    assert main(["fit", "--store", str(tmp_path / "data"), "--max-states", "3", "--restarts", "2",
                 "--resamples", "0", "-q"]) == 0
    fdir = next((tmp_path / "data" / "noise" / "fits").iterdir())
    assert json.loads((fdir / "model.json").read_text())["n_states"] == 1
    err = capsys.readouterr().err
    assert "K = 1" in err and "--covariance diag" in err


@pytest.mark.parametrize("command", ["collect", "fit", "report", "ls", "simulate", "compare"])
def test_help_is_plain_text(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and f"latent {command}" in out
