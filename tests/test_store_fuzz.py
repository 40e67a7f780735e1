"""Property-based fuzzing of the store (Hypothesis): damage one artifact of a valid store at random,
run every command that reads it, and require a correct result or one clear line, never a
traceback and never an answer built on data that fails the independent checks of
tests/store_mutations.py.

Hypothesis runs derandomised (the same cases on every run, no example database), so a failure
here is reproducible; its shrinking reports the smallest damage that breaks a command. The case
counts are small enough for CI; ``LATENT_FUZZ_EXAMPLES`` multiplies them and ``LATENT_FUZZ_LOG``
(a path) appends one JSON line per case: bench/bench_fuzz.py runs thousands this way and writes
the ``fuzz`` block of bench/RESULTS.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store_mutations import (BASE, FAST_FIT, JSON_OPS, OTHER, STRANGE_VALUES, TABLE_OPS, analysis_is_valid, judge,
                             json_paths, make_base, model_is_valid, mutate_json, mutate_table, run_cli,
                             run_table_is_valid)

SCALE = float(os.environ.get("LATENT_FUZZ_EXAMPLES", "1"))
LOG = os.environ.get("LATENT_FUZZ_LOG")


def fuzz_settings(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


def record(target: str, change: str, outcomes: dict) -> None:
    if LOG:
        with open(LOG, "a") as fh:
            fh.write(json.dumps({"target": target, "change": change, "outcomes": outcomes}) + "\n")


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("fuzz") / "data"
    fit_id = make_base(store)
    return store, fit_id


class Copy:
    """A scratch copy of the valid store, removed afterwards."""

    def __init__(self, base: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="latent-fuzz-"))
        self.store = self.dir / "data"
        shutil.copytree(base, self.store, symlinks=True)

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)


def draw_json_change(data, obj) -> str:
    path = data.draw(st.sampled_from(json_paths(obj)), label="path")
    op = data.draw(st.sampled_from(JSON_OPS), label="op")
    value = data.draw(st.sampled_from(STRANGE_VALUES), label="value")
    return mutate_json(obj, path, op, value)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, allow_nan=True))


def check(outcomes: dict, target: str, change: str) -> None:
    record(target, change, {c: o[0] for c, o in outcomes.items()})
    defects = {c: o[1] for c, o in outcomes.items() if o[0] == "defect"}
    assert not defects, (change, defects)


def _used_seeds(store: Path, study: str) -> list[int] | None:
    fits = sorted((store / study / "fits").iterdir(), key=lambda p: p.stat().st_mtime)
    model = json.loads((fits[-1] / "model.json").read_text())
    return [int(s) for s in model["seeds"]["used"]]


def _fit_again(store: Path) -> tuple[int, str, str]:
    shutil.rmtree(store / OTHER / "fits", ignore_errors=True)
    return run_cli(["fit", "--store", str(store), "--study", OTHER, *FAST_FIT])


# --------------------------------------------------------------------------- study.json


def study_is_valid(meta) -> bool:
    """What fit needs of study.json, checked by hand."""
    def text(x):
        return isinstance(x, str) and bool(x)

    if not isinstance(meta, dict) or not text(meta.get("task")):
        return False
    conv = meta.get("convergence")
    if not (isinstance(conv, dict) and text(conv.get("metric")) and isinstance(conv.get("threshold"), (int, float))
            and not isinstance(conv.get("threshold"), bool) and math.isfinite(conv["threshold"])
            and conv.get("direction", "above") in ("above", "below")):
        return False
    feats = meta.get("features")
    if feats is not None and not (isinstance(feats, list) and feats and all(text(f) for f in feats)):
        return False
    seeds = meta.get("seeds")
    if seeds is not None and not (isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool)
                                                                  and s >= 0 for s in seeds)
                                  and len(set(seeds)) == len(seeds)):
        return False
    if "step_unit" in meta and not text(meta["step_unit"]):
        return False
    sched = meta.get("schedule")
    if sched is not None and not (isinstance(sched, dict) and isinstance(sched.get("every"), int)
                                  and not isinstance(sched["every"], bool) and sched["every"] >= 1
                                  and isinstance(sched.get("last"), int) and not isinstance(sched["last"], bool)
                                  and sched["last"] >= 0):
        return False
    return True


@fuzz_settings(20)
@given(data=st.data())
def test_damaged_study_json(base_store, data):
    base, _ = base_store
    with Copy(base) as store:
        path = store / OTHER / "study.json"
        meta = json.loads(path.read_text())
        change = draw_json_change(data, meta)
        write_json(path, meta)
        rc, out, err = run_cli(["ls", "--store", str(store)])
        outcomes = {"ls": judge("ls", rc, err, accepted_ok=BASE in out and OTHER in out)}
        rc, out, err = _fit_again(store)
        outcomes["fit"] = judge("fit", rc, err, accepted_ok=study_is_valid(meta))
        check(outcomes, "study.json", change)


# --------------------------------------------------------------------------- run manifests


@fuzz_settings(12)
@given(data=st.data())
def test_damaged_run_manifest(base_store, data):
    base, _ = base_store
    seed = data.draw(st.integers(0, 7), label="seed")
    with Copy(base) as store:
        path = store / OTHER / "runs" / f"seed-{seed:03d}.json"
        manifest = json.loads(path.read_text())
        change = f"seed {seed}: " + draw_json_change(data, manifest)
        write_json(path, manifest)
        rc, out, err = run_cli(["ls", "--store", str(store)])
        outcomes = {"ls": judge("ls", rc, err, accepted_ok=OTHER in out)}
        rc, out, err = _fit_again(store)
        sound = (isinstance(manifest, dict) and manifest.get("status") == "done"
                 and manifest.get("seed", seed) == seed and not isinstance(manifest.get("seed", seed), bool)
                 and manifest.get("rows", 30) == len(pd.read_parquet(path.with_suffix(".parquet"))))
        # accepted: the fit may use this run only if its manifest still vouches for it
        ok = rc == 0 and (sound or seed not in _used_seeds(store, OTHER))
        outcomes["fit"] = judge("fit", rc, err, accepted_ok=ok)
        check(outcomes, "run manifest", change)


# --------------------------------------------------------------------------- run tables


@fuzz_settings(20)
@given(data=st.data())
def test_damaged_run_table(base_store, data):
    base, _ = base_store
    seed = data.draw(st.integers(0, 7), label="seed")
    op = data.draw(st.sampled_from(TABLE_OPS), label="op")
    with Copy(base) as store:
        path = store / OTHER / "runs" / f"seed-{seed:03d}.parquet"
        frame = pd.read_parquet(path)
        features = json.loads((store / OTHER / "study.json").read_text())["features"]
        column = data.draw(st.sampled_from(features + ["val_acc"]), label="column")
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="rng"))
        frame, change = mutate_table(frame, op, rng, column)
        frame.to_parquet(path, index=False)
        rc, out, err = run_cli(["ls", "--store", str(store)])
        outcomes = {"ls": judge("ls", rc, err, accepted_ok=OTHER in out)}
        rc, out, err = _fit_again(store)
        ok = True
        if rc == 0:
            for s in _used_seeds(store, OTHER):
                t = pd.read_parquet(store / OTHER / "runs" / f"seed-{s:03d}.parquet")
                ok &= run_table_is_valid(t, s) and all(c in t.columns for c in features)
                ok &= all(pd.api.types.is_numeric_dtype(t[c]) for c in features)
        outcomes["fit"] = judge("fit", rc, err, accepted_ok=ok)
        check(outcomes, "run table", f"seed {seed}: {change}")


# --------------------------------------------------------------------------- fit files


def damage_fit(data, store: Path, fit_id: str) -> tuple[str, bool]:
    """Damage ``model.json`` or ``analysis.json`` of the copy's fit: (what changed, whether the
    independent checks still accept the fit)."""
    which = data.draw(st.sampled_from(["model.json", "analysis.json"]), label="file")
    fit_dir = store / OTHER / "fits" / fit_id
    obj = json.loads((fit_dir / which).read_text())
    change = f"{which}: " + draw_json_change(data, obj)
    write_json(fit_dir / which, obj)
    model = json.loads((fit_dir / "model.json").read_text())
    analysis = json.loads((fit_dir / "analysis.json").read_text())
    return change, model_is_valid(model) and analysis_is_valid(analysis, model["n_states"])


@fuzz_settings(20)
@given(data=st.data())
def test_damaged_fit_read_by_predict_and_compare(base_store, data):
    base, fit_id = base_store
    with Copy(base) as store:
        change, valid = damage_fit(data, store, fit_id)
        rc, out, err = run_cli(["predict", "--store", str(store), "--fit", f"{OTHER}/{fit_id}", f"{BASE}:0"])
        outcomes = {"predict": judge("predict", rc, err, accepted_ok=valid)}
        rc, out, err = run_cli(["compare", "--store", str(store), "--no-fit", BASE, OTHER, *FAST_FIT[:-1]])
        outcomes["compare"] = judge("compare", rc, err, accepted_ok=valid)
        check(outcomes, "fit files", change)


@pytest.mark.slow
@fuzz_settings(6)
@given(data=st.data())
def test_damaged_fit_read_by_report(base_store, data):
    base, fit_id = base_store
    with Copy(base) as store:
        change, valid = damage_fit(data, store, fit_id)
        rc, out, err = run_cli(["report", "--store", str(store), "--study", OTHER, "--fit", fit_id])
        check({"report": judge("report", rc, err, accepted_ok=valid)}, "fit files", change)


# --------------------------------------------------------------------------- truth.json


@fuzz_settings(6)
@given(data=st.data())
def test_damaged_truth_never_stops_a_fit(base_store, data):
    base, _ = base_store
    with Copy(base) as store:
        path = store / OTHER / "truth.json"
        truth = json.loads(path.read_text())
        change = draw_json_change(data, truth)
        write_json(path, truth)
        rc, out, err = _fit_again(store)
        check({"fit": judge("fit", rc, err, accepted_ok=True)}, "truth.json", change)
        assert rc == 0, err  # the truth only adds a comparison line; it never stops a fit


# --------------------------------------------------------------------------- import


@fuzz_settings(15)
@given(data=st.data())
def test_damaged_table_import(base_store, data):
    base, _ = base_store
    with Copy(base) as store:
        frames = [pd.read_parquet(p) for p in sorted((store / BASE / "runs").glob("seed-*.parquet"))]
        table = pd.concat(frames, ignore_index=True)
        op = data.draw(st.sampled_from(TABLE_OPS), label="op")
        column = data.draw(st.sampled_from([c for c in table.columns if c not in ("seed", "step")]), label="column")
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1), label="rng"))
        table, change = mutate_table(table, op, rng, column)
        src = store.parent / "all_runs.csv"
        table.to_csv(src, index=False)
        rc, out, err = run_cli(["import", "table", str(src), "--store", str(store), "--study", "imp",
                                "--seed-col", "seed", "--convergence", "val_acc>0.9"])
        ok = True
        if rc == 0:
            for p in sorted((store / "imp" / "runs").glob("seed-*.parquet")):
                t = pd.read_parquet(p)
                ok &= run_table_is_valid(t, int(p.stem.split("-")[1]))
        outcomes = {"import": judge("import", rc, err, accepted_ok=ok)}
        check(outcomes, "import table", change)
