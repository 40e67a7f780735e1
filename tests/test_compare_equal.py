"""`latent compare` at equal size: larger studies refitted on subsamples of the smallest one's size.

Negative controls: studies with the same dynamics (an independent draw of the same planted process,
and a subset of the larger study's own runs) are never called different, even with enough
subsamples that a difference could be claimed. Positive control: a study whose runs have one state
instead of three is called different in K at the same settings. The Monte Carlo p and Holm's
adjustment are checked against hand-computed values.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from latent.cli import main
from latent.store import run_stem
from latent.equal_size import (SubsampleSpread, equal_tests, monte_carlo_p, subsample_seeds,
                               subsamples_for)
from planted import FEATURES, emit, run_table, well_separated_means, write_study

T = 30
FAST = ["--max-states", "3", "--restarts", "1", "--n-iter", "10", "--n-boot", "20", "--resamples", "0",
        "--min-runs", "3", "--jobs", "1", "--folds", "3"]


def three_phase_runs(seeds, rng, phases: int = 3) -> dict:
    """Runs 0 -> 1 -> 2 through well-separated states (``phases=1``: one state throughout), switch points
    drawn per run; val_acc jumps to 0.95 on entering the last third."""
    means = well_separated_means(3, len(FEATURES))
    runs = {}
    for s in seeds:
        a = int(rng.integers(5, 12))
        b = int(rng.integers(a + 5, 24))
        states = np.concatenate([np.zeros(a, int), np.ones(b - a, int), np.full(T - b, 2)])
        if phases == 1:
            states = np.zeros(T, int)
        acc = np.where(np.arange(T) >= b, 0.95, 0.5)
        runs[s] = run_table(s, emit(states, means, rng, noise=0.5), FEATURES, val_acc=acc)
    return runs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("equal")
    write_study(root / "big", three_phase_runs(range(18), np.random.default_rng(1)))
    write_study(root / "twin", three_phase_runs(range(100, 106), np.random.default_rng(2)))
    flat = three_phase_runs(range(200, 206), np.random.default_rng(3), phases=1)
    write_study(root / "flat", flat)
    # the big study's own first six runs, copied: identical dynamics by construction
    (root / "part" / "runs").mkdir(parents=True)
    meta = json.loads((root / "big" / "study.json").read_text())
    (root / "part" / "study.json").write_text(json.dumps({**meta, "name": "part", "seeds": list(range(6))}))
    for s in range(6):
        src = root / "big" / "runs" / f"{run_stem(s)}.parquet"
        shutil.copy(src, root / "part" / "runs" / src.name)
    return root


def compare(store, *argv):
    try:
        return main(["compare", "--store", str(store), *FAST, *argv])
    except SystemExit as exc:
        return exc.code


def result(store, a, b) -> dict:
    (d,) = [p for p in (store / "comparisons" / f"{a}-vs-{b}").iterdir() if not p.name.startswith(".")]
    return json.loads((d / "comparison.json").read_text())


# --------------------------------------------------------------------------- units


def test_subsample_draws_are_fixed_per_index_and_extend():
    pool = [5, 1, 9, 3, 7, 11, 2]
    first = [subsample_seeds(pool, 3, i, random_state=0) for i in range(4)]
    assert first == [subsample_seeds(pool, 3, i, random_state=0) for i in range(4)]
    for d in first:
        assert len(d) == 3 and len(set(d)) == 3 and set(d) <= set(pool) and list(d) == sorted(d)
    assert subsample_seeds(sorted(pool), 3, 2) == first[2]  # the pool's order does not matter
    assert len(set(first)) > 1  # the draws differ from one another
    assert subsample_seeds(pool, 7, 0) == tuple(sorted(pool))
    with pytest.raises(ValueError):
        subsample_seeds(pool, 8, 0)


def test_monte_carlo_p_by_hand():
    s = [1.0, 2.0, 3.0, 4.0]
    # above every draw: 1 + #{s >= 5} = 1 of S + 1 = 5, doubled
    assert monte_carlo_p(5.0, s) == pytest.approx(2 / 5)
    assert monte_carlo_p(0.0, s) == pytest.approx(2 / 5)
    assert monte_carlo_p(2.5, s) == 1.0  # in the middle: capped at 1
    # ties count against a difference: 4 is <= every draw and >= one of them
    assert monte_carlo_p(4.0, s) == pytest.approx(min(1, 2 * min(1 + 4, 1 + 1) / 5))
    assert monte_carlo_p(3.0, [3.0] * 9) == 1.0
    assert monte_carlo_p(1.0, []) is None


def _summary(name, k, r2, dissim, detours, n_runs):
    from latent.compare import StudySummary, convergence_stats

    return StudySummary(name=name, root="", fit_id="f", fitted_now=False, task="planted", preset=None,
                        step_unit="epoch", n_runs=n_runs, n_states=k, selection="", detours=tuple({"state": i}
                                                                                              for i in range(detours)),
                        detour_rule="delay", resamples_used=0, r2=r2, r2_p=None, f_stat=None, regression_runs=None,
                        dissimilarity=dissim, forking=False, forks=(), minor_branches=(), min_runs=3,
                        convergence=convergence_stats({"times": {"0": 1.0, "1": 2.0}, "tau": 3.0}))


def _spread(name, ks, n=6, of=18):
    draws = tuple({"index": i, "seeds": list(range(n)), "n_states": k, "r2": 0.5, "dissimilarity": 0.2,
                   "detours": 0} for i, k in enumerate(ks))
    return SubsampleSpread(study=name, n_runs=n, of_runs=of, draws=draws)


def test_equal_tests_holm_over_pairs_and_quantities_by_hand():
    small = _summary("small", 5, 0.5, 0.2, 0, 6)
    big = _summary("big", 3, 0.9, 0.4, 1, 18)
    S = 199
    spread = _spread("big", [3] * S)
    tests = {t.quantity: t for t in equal_tests([small, big], {"big": spread}, alpha=0.05)}
    assert set(tests) == {"n_states", "r2", "dissimilarity", "detours"}
    k = tests["n_states"]
    assert (k.a_value, k.b_value, k.b_range, k.a_range) == (5, 3, (3, 3), None)
    assert k.p == pytest.approx(2 / (S + 1)) and k.min_p == pytest.approx(2 / (S + 1))
    # r2, dissimilarity and detours equal every draw: p = 1; Holm: K's p times the 4 tests
    assert tests["r2"].p == 1.0 and tests["detours"].p == 1.0
    assert k.p_adjusted == pytest.approx(4 * 2 / (S + 1)) and k.differs
    assert not any(t.differs for q, t in tests.items() if q != "n_states")
    # 20 draws cannot reach 0.05 after the adjustment, whatever the value
    few = {t.quantity: t for t in equal_tests([small, big], {"big": _spread("big", [3] * 20)})}
    assert not few["n_states"].differs and few["n_states"].p == pytest.approx(2 / 21)
    assert subsamples_for(0.05, 4) == 159 and 2 / (159 + 1) * 4 <= 0.05 < 2 / 159 * 4
    # the same value inside the spread: no difference
    inside = {t.quantity: t for t in equal_tests([_summary("small", 3, 0.5, 0.2, 0, 6), big],
                                                 {"big": _spread("big", [2, 3, 4] * 60)})}
    assert inside["n_states"].p == 1.0 and not inside["n_states"].differs
    # no spread at all: nothing is tested
    assert equal_tests([small, big], {}) == ()
    # three studies, two of the smallest size: that pair is said to have no spread, not to have failed
    from latent.compare import compare_studies, equal_verdicts

    twin = _summary("twin", 4, 0.6, 0.3, 0, 6)
    comp = compare_studies([small, twin, big], [_spread("big", [3] * 20)], subsamples=20)
    lines = equal_verdicts(comp)
    assert any(line.startswith("small vs twin: both have 6 runs, so neither was refitted") for line in lines)
    assert any(line.startswith("small vs big at 6 runs: ") for line in lines)
    assert not any("no subsample refit succeeded" in line for line in lines)
    # the hint for more subsamples is worked out at the fits' level, not at 0.05
    hint = [line for line in lines if "cannot give a p below" in line]
    assert hint and "--subsamples 319 " in hint[0] and "at 0.05 after Holm" in hint[0]  # 2 · 8 / 0.05 − 1
    strict = equal_verdicts(compare_studies([small, twin, big], [_spread("big", [3] * 20)], subsamples=20, alpha=0.01))
    hint = [line for line in strict if "cannot give a p below" in line]
    assert hint and "--subsamples 1599 " in hint[0] and "at 0.01 after Holm" in hint[0]  # 2 · 8 / 0.01 − 1


# --------------------------------------------------------------------------- end to end


def test_same_dynamics_are_not_called_different_and_another_dynamics_is(store, capsys):
    S = 159  # enough for a claim at 0.05 after Holm over the four quantities
    for other in ("twin", "part"):
        assert compare(store, "big", other, "--subsamples", str(S)) == 0
        out = capsys.readouterr().out
        data = result(store, "big", other)["equal_size"]
        assert data["n_runs"] == 6 and data["subsamples"] == S
        (spread,) = data["spreads"]
        assert spread["study"] == "big" and spread["of_runs"] == 18 and len(spread["draws"]) == S
        assert all(len(d["seeds"]) == 6 and set(d["seeds"]) <= set(range(18)) for d in spread["draws"])
        assert not any(t["differs"] for t in data["tests"]), data["tests"]
        assert f"at equal size, 6 runs (big refitted on {S} subsamples of 6 of its 18 runs" in out
        assert f"big vs {other} at 6 runs: " in out and "differs" not in out
    # the refits were cached beside big's fit and reused by the second comparison
    assert "refitting 159 subsample(s)" not in out
    # a study with one state where the others have three: K differs at equal size
    assert compare(store, "big", "flat", "--subsamples", str(S)) == 0
    out = capsys.readouterr().out
    tests = {t["quantity"]: t for t in result(store, "big", "flat")["equal_size"]["tests"]}
    assert tests["n_states"]["differs"] and tests["n_states"]["b_value"] < tests["n_states"]["a_range"][0]
    assert "K differs" in out
    page = next((store / "comparisons" / "big-vs-flat").glob("*/index.html")).read_text()
    assert "At equal size: 6 runs" in page and "159 subsamples of 6 of its 18 runs" in page and "K differs" in page


def test_cache_default_count_all_runs_and_errors(store, capsys, tmp_path, monkeypatch):
    assert compare(store, "big", "twin", "--subsamples", "4") == 0
    out = capsys.readouterr().out
    cache = [p for p in (store / "big" / "fits").glob("*/subsamples-n6.json")]
    assert len(cache) == 1
    first = json.loads(cache[0].read_text())
    assert first["format"] == "latent.subsamples/1" and first["n"] == 6 and first["pool"] == list(range(18))
    assert "cannot give a p below 0.4" in out and "--subsamples 159" in out
    # the first four draws are the same whatever the count (a larger count extends a smaller one)
    data = result(store, "big", "twin")["equal_size"]
    assert [d["seeds"] for d in data["spreads"][0]["draws"]] == [
        list(subsample_seeds(range(18), 6, i)) for i in range(4)]
    # a damaged cache is ignored and rewritten, never trusted
    cache[0].write_text('{"format": "latent.subsamples/1", "draws": [{"index": 0, "n_states": "x"}]}')
    assert compare(store, "big", "twin", "--subsamples", "2") == 0
    assert "refitting 2 subsample(s)" in capsys.readouterr().out
    assert json.loads(cache[0].read_text())["pool"] == list(range(18))
    # --all-runs: no equal-size block; the note says the sizes differ and are not evened out
    assert compare(store, "big", "twin", "--all-runs") == 0
    out = capsys.readouterr().out
    assert "at equal size" not in out and "uses all runs, without equal-size refits" in out
    assert result(store, "big", "twin")["equal_size"] is None
    # --no-fit with a cache too small: one line, exit 2, nothing refitted
    cache[0].unlink()
    assert compare(store, "big", "twin", "--no-fit") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent compare: error: --no-fit: comparing at equal size needs 20 subsample refit(s) of big")
    assert "\n" not in err and not cache[0].exists()
    # a fit directory that refuses the write (a read-only store): the comparison is made, the cache is not
    import latent.store
    from latent.errors import StoreError

    def refuse(path, obj, sync=True):
        raise StoreError(f"cannot write {path}: Read-only file system")

    monkeypatch.setattr(latent.store, "atomic_write_json", refuse)
    assert compare(store, "big", "twin", "--subsamples", "2") == 0
    assert "could not cache the subsample refits (cannot write" in capsys.readouterr().out
    assert not cache[0].exists()
    monkeypatch.undo()
    assert compare(store, "big", "twin", "--subsamples", "1") == 2
    assert "--subsamples must be at least 2" in capsys.readouterr().err
    assert compare(store, "big", "twin", "--subsamples", "3", "--all-runs") == 2
