"""latent.external: convergence rules, the study.json of an external study, and writing it whole or not at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latent import external, locks
from latent.errors import UserError
from latent.external import (default_features, external_meta, parse_convergence, recover_staging,
                             write_external_study)
from latent.store import REFERENCE_COLUMNS, list_studies


# --------------------------------------------------------------------------- parse_convergence


@pytest.mark.parametrize("text, want", [
    ("val_acc>0.9", ("val_acc", 0.9, "above")),
    ("val_acc>=0.9", ("val_acc", 0.9, "above")),
    ("val_loss<0.1", ("val_loss", 0.1, "below")),
    ("  val_loss <= 1e-2 ", ("val_loss", 0.01, "below")),
    ("eval/acc>-.5", ("eval/acc", -0.5, "above")),
    ("acc>3", ("acc", 3.0, "above")),
])
def test_parse_convergence_accepts_the_four_operators(text, want):
    got = parse_convergence(text)
    assert got == {"metric": want[0], "threshold": want[1], "direction": want[2]}
    assert type(got["threshold"]) is float


@pytest.mark.parametrize("text", ["val_acc=0.9", "val_acc>", ">0.9", "val_acc>abc", "", "val_acc 0.9",
                                  "val_acc>0.9>1", "val_acc=>0.9", "val_acc>1e999"])
def test_parse_convergence_refuses_other_forms_in_one_line(text):
    with pytest.raises(UserError) as err:
        parse_convergence(text)
    message = str(err.value)
    assert "\n" not in message
    assert "METRIC>THRESHOLD" in message and "val_acc>0.9" in message


# --------------------------------------------------------------------------- external_meta


def test_converged_runs_uses_the_first_crossing_rule():
    import pandas as pd

    from latent.external import converged_runs, parse_convergence

    tables = {
        3: pd.DataFrame({"step": [0, 10, 20], "val_loss": [3.0, 1.5, 0.4]}),   # crosses at 20
        1: pd.DataFrame({"step": [0, 10, 20], "val_loss": [3.0, 0.5, 0.5]}),   # never below 0.5
        2: pd.DataFrame({"step": [0, 10], "val_loss": [float("nan"), 0.1]}),   # crosses at 10
    }
    assert converged_runs(tables, parse_convergence("val_loss<0.5")) == [2, 3]
    assert converged_runs(tables, parse_convergence("val_loss<=0.5")) == [2, 3]  # the rule is strict either way
    assert converged_runs(tables, parse_convergence("val_loss<0.6")) == [1, 2, 3]


def test_meta_uses_the_14_reference_columns_in_their_order_when_all_are_present():
    columns = ["step", "val_acc", "epoch"] + list(reversed(REFERENCE_COLUMNS)) + ["train_loss"]
    meta = external_meta("ext", [2, 0, 1], columns, source={"kind": "table", "paths": ["a.csv"]},
                         convergence=parse_convergence("val_acc>0.9"))
    assert meta["features"] == list(REFERENCE_COLUMNS)
    assert meta["metrics"] == ["val_acc", "epoch"] + list(reversed(REFERENCE_COLUMNS)) + ["train_loss"]
    assert meta["seeds"] == [0, 1, 2]
    assert meta["task"] == meta["preset"] == "external"
    assert meta["format"] == "latent.study/1" and meta["name"] == "ext"
    assert meta["source"] == {"kind": "table", "paths": ["a.csv"]}
    assert meta["convergence"] == {"metric": "val_acc", "threshold": 0.9, "direction": "above"}
    assert meta["step_unit"] == "step"
    assert "schedule" not in meta and "runs" not in meta


def test_meta_features_fall_back_to_numeric_columns_without_time_columns_or_the_convergence_metric():
    columns = ["seed", "step", "epoch", "loss", "grad_norm", "val_acc", "wall_time"]
    meta = external_meta("ext", [0], columns, source={}, convergence=parse_convergence("val_acc>0.5"),
                         step_unit="epoch", runs={0: "alpha"})
    assert meta["features"] == ["loss", "grad_norm"]
    assert meta["metrics"] == ["epoch", "loss", "grad_norm", "val_acc", "wall_time"]
    assert meta["runs"] == {"0": "alpha"} and meta["step_unit"] == "epoch"
    assert default_features(["loss", "val_acc"], None) == ["loss", "val_acc"]


def test_meta_refuses_unknown_metrics_and_empty_feature_sets():
    with pytest.raises(UserError, match="unknown convergence metric 'val_acc'.*loss"):
        external_meta("ext", [0], ["step", "loss"], source={}, convergence=parse_convergence("val_acc>0.9"))
    with pytest.raises(UserError, match="no column is left"):
        external_meta("ext", [0], ["step", "val_acc"], source={}, convergence=parse_convergence("val_acc>0.9"))
    with pytest.raises(UserError, match="'nope'"):
        external_meta("ext", [0], ["step", "loss"], source={}, convergence=None, features=["nope"])
    with pytest.raises(UserError, match="invalid study name"):
        external_meta("../x", [0], ["step", "loss"], source={}, convergence=None)


# --------------------------------------------------------------------------- write_external_study


def _tables(n_runs=3, n_steps=5, shift=0.0):
    rng = np.random.default_rng(0)
    tables = {}
    for seed in range(n_runs):
        frame = pd.DataFrame({"step": np.arange(n_steps, dtype=np.int64)[::-1] * 10})  # out of order on purpose
        for c in ("loss", "grad"):
            frame[c] = rng.normal(size=n_steps) + shift
        frame["val_acc"] = np.linspace(0, 1, n_steps)[::-1]
        tables[seed] = frame
    return tables


def _meta(tables, name="ext"):
    return external_meta(name, list(tables), ["step", "loss", "grad", "val_acc"], source={"kind": "test"},
                         convergence=parse_convergence("val_acc>0.9"))


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_makes_a_study_the_store_reads_back_exactly(tmp_path):
    tables = _tables()
    study = write_external_study(tmp_path / "store", "ext", tables, _meta(tables))
    assert study.root == tmp_path / "store" / "ext"
    assert [s.name for s in list_studies(tmp_path / "store")] == ["ext"]
    table, statuses = study.read_finished_runs()
    assert {s: st.status for s, st in statuses.items()} == {0: "done", 1: "done", 2: "done"}
    assert study.status()["status"] == "done"
    for seed, frame in tables.items():
        back = study.read_run(seed)
        want = frame.sort_values("step").reset_index(drop=True)
        assert list(back.columns) == ["seed", "step", "loss", "grad", "val_acc"]
        assert (back["seed"] == seed).all()
        pd.testing.assert_frame_equal(back.drop(columns="seed"), want, check_exact=True)
        manifest = study.read_manifest(seed)
        assert manifest == {"format": "latent.run/1", "seed": seed, "status": "done", "last_step": 40, "rows": 5}
    assert study.read_meta() == _meta(tables)
    # nothing but the study and its lock file is left in the store
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".ext.lock", "ext"]


def test_an_existing_study_is_refused_without_overwrite_and_replaced_with_it(tmp_path):
    store = tmp_path / "store"
    old = _tables()
    write_external_study(store, "ext", old, _meta(old))
    before = _snapshot(store / "ext")
    new = _tables(n_runs=2, shift=5.0)
    with pytest.raises(UserError, match="already exists.*--overwrite") as err:
        write_external_study(store, "ext", new, _meta(new))
    assert "\n" not in str(err.value)
    assert _snapshot(store / "ext") == before
    study = write_external_study(store, "ext", new, _meta(new), overwrite=True)
    assert study.run_seeds() == [0, 1]
    assert study.read_run(0)["loss"].min() > 2
    assert sorted(p.name for p in store.iterdir()) == [".ext.lock", "ext"]


def test_a_directory_that_is_not_a_study_is_never_replaced(tmp_path):
    store = tmp_path / "store"
    (store / "ext").mkdir(parents=True)
    (store / "ext" / "precious.txt").write_text("keep")
    tables = _tables()
    with pytest.raises(UserError, match="not a study"):
        write_external_study(store, "ext", tables, _meta(tables), overwrite=True)
    assert (store / "ext" / "precious.txt").read_text() == "keep"


def test_the_staging_directory_is_invisible_to_list_studies(tmp_path, monkeypatch):
    store = tmp_path / "store"
    seen = []
    real = external.atomic_write_json

    def spy(path, obj, **kwargs):
        real(path, obj, **kwargs)
        if Path(path).name == "study.json":  # the staged study is complete now, before its rename
            seen.append((list_studies(store), sorted(p.name for p in store.iterdir())))

    monkeypatch.setattr(external, "atomic_write_json", spy)
    tables = _tables()
    write_external_study(store, "ext", tables, _meta(tables))
    studies, names = seen[0]
    assert studies == []
    assert any(n.startswith(".ext.import-") for n in names)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_mid_write_leaves_nothing_and_the_old_study_untouched(tmp_path, monkeypatch, failure, existing):
    store = tmp_path / "store"
    old = _tables()
    if existing:
        write_external_study(store, "ext", old, _meta(old))
    before = _snapshot(store / "ext") if existing else None
    calls = []
    real = external.atomic_write_parquet

    def dies_on_the_second_run(path, frame, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise failure(28, "No space left on device") if failure is OSError else failure()
        real(path, frame, **kwargs)

    monkeypatch.setattr(external, "atomic_write_parquet", dies_on_the_second_run)
    new = _tables(n_runs=3, shift=5.0)
    with pytest.raises((KeyboardInterrupt, OSError)):
        write_external_study(store, "ext", new, _meta(new), overwrite=True)
    assert len(calls) == 2
    left = sorted(p.name for p in store.iterdir())
    assert left == ([".ext.lock", "ext"] if existing else [".ext.lock"])
    if existing:
        assert _snapshot(store / "ext") == before


def test_a_failed_rename_in_overwrite_puts_the_old_study_back(tmp_path, monkeypatch):
    store = tmp_path / "store"
    old = _tables()
    write_external_study(store, "ext", old, _meta(old))
    before = _snapshot(store / "ext")
    real = external.os.replace
    calls = []

    def second_fails(src, dst):
        if Path(src).is_dir():  # file writes rename too; count the study renames only
            calls.append((Path(src).name, Path(dst).name))
            if len(calls) == 2:  # old study moved aside; the new one fails to come in
                raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(external.os, "replace", second_fails)
    new = _tables(shift=5.0)
    with pytest.raises(UserError, match="cannot rename into place"):
        write_external_study(store, "ext", new, _meta(new), overwrite=True)
    assert calls[:2] == [("ext", "replaced"), ("ext", "ext")]
    assert _snapshot(store / "ext") == before
    assert sorted(p.name for p in store.iterdir()) == [".ext.lock", "ext"]


def test_a_kill_between_the_renames_is_repaired_by_the_next_import(tmp_path):
    store = tmp_path / "store"
    old = _tables()
    write_external_study(store, "ext", old, _meta(old))
    before = _snapshot(store / "ext")
    # what a kill -9 after "move the old study aside" leaves behind
    staging = store / ".ext.import-99999"
    (staging / "ext").mkdir(parents=True)
    (store / "ext").rename(staging / "replaced")
    assert list_studies(store) == []
    new = _tables(shift=5.0)
    with pytest.raises(UserError, match="already exists"):  # the old study is back first, then refused
        write_external_study(store, "ext", new, _meta(new))
    assert _snapshot(store / "ext") == before
    assert sorted(p.name for p in store.iterdir()) == [".ext.lock", "ext"]
    # recover_staging on its own: only leftovers, nothing in place is touched
    (store / ".ext.import-1" / "ext").mkdir(parents=True)
    recover_staging(store, "ext")
    assert sorted(p.name for p in store.iterdir()) == [".ext.lock", "ext"]


def test_overwrite_is_refused_while_a_collection_holds_a_run(tmp_path):
    store = tmp_path / "store"
    old = _tables()
    study = write_external_study(store, "ext", old, _meta(old))
    lease = locks.acquire(study.run_lease_path(1))
    before = _snapshot(study.root)
    try:
        with pytest.raises(UserError, match="being collected"):
            write_external_study(store, "ext", old, _meta(old), overwrite=True)
    finally:
        lease.release()
    assert _snapshot(study.root) == before
    write_external_study(store, "ext", old, _meta(old), overwrite=True)  # free now


def test_tables_that_disagree_with_the_meta_are_refused_before_anything_is_written(tmp_path):
    tables = _tables()
    meta = _meta(tables)
    bad = dict(tables)
    bad[1] = tables[1].drop(columns="grad")
    with pytest.raises(UserError, match="run 1 lacks the column"):
        write_external_study(tmp_path / "s", "ext", bad, meta)
    bad[1] = pd.concat([tables[1], tables[1].iloc[:1]])
    with pytest.raises(UserError, match="two rows at step 40"):
        write_external_study(tmp_path / "s", "ext", bad, meta)
    with pytest.raises(UserError, match="seeds"):
        write_external_study(tmp_path / "s", "ext", {0: tables[0]}, meta)
    assert not (tmp_path / "s").exists()


def test_the_core_and_the_importers_load_without_torch_or_tensorboard():
    code = ("import sys; import latent.external, latent.importers, latent.importers.tables, "
            "latent.importers.tensorboard, latent.cli.import_, latent.cli; latent.cli.build_parser(); "
            "bad = [m for m in ('torch', 'tbparse', 'tensorboard', 'collect') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_nullable_step_with_gaps_is_refused_in_one_line(tmp_path):
    tables = _tables()
    seed = sorted(tables)[0]
    tables[seed] = tables[seed].assign(step=pd.array([None] + list(tables[seed]["step"].iloc[1:]), dtype="Int64"))
    with pytest.raises(UserError, match=f"run {seed} has steps that are not whole numbers"):
        write_external_study(tmp_path / "store", "ext", tables, _meta(tables))
