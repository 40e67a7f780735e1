"""`latent import`: tables and TensorBoard logs round-trip into studies that `latent fit` fits exactly like the originals.

The truth is a simulated study (latent.simulate): its runs are written out in each format by
pandas or TensorBoard's writer, imported, and compared with the study's own tables. Every
refusal is one line on stderr, exit 2, names the file, and leaves neither a study nor a staging
directory in the store.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from latent import external
from latent.cli import main
from latent.simulate import SimConfig, simulate, write_study
from latent.store import REFERENCE_COLUMNS, Study

#: the TensorBoard tests write events with torch's SummaryWriter and read them with tbparse
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tbparse") is None or importlib.util.find_spec("tensorboard") is None,
    reason='needs pip install -e ".[tensorboard]"')
FIT = ["--max-states", "4", "--restarts", "2", "--folds", "3", "--resamples", "0", "--n-boot", "0", "--jobs", "1",
       "-q"]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A simulated study (10 runs × 50 checkpoints, a planted detour) and its runs as one table."""
    root = tmp_path_factory.mktemp("orig") / "sim"
    table, truth = simulate(SimConfig(n_runs=10, n_checkpoints=50, detours=1, separation=6.0, seed=3))
    write_study(root, table, truth)
    return Study(root), Study(root).read_runs()


def _import(store, *argv):
    return main(["import", *map(str, argv), "--store", str(store)])


def _imported(store, name="imp") -> pd.DataFrame:
    return Study(Path(store) / name).read_runs()


def _same_tables(imported: pd.DataFrame, orig: pd.DataFrame, rtol=0.0):
    assert sorted(imported["seed"].unique()) == sorted(orig["seed"].unique())
    assert imported["step"].dtype == np.int64
    for col in orig.columns:
        if rtol:
            np.testing.assert_allclose(imported[col].to_numpy(float), orig[col].to_numpy(float), rtol=rtol, atol=1e-6)
        else:
            pd.testing.assert_series_equal(imported[col], orig[col], check_exact=True, check_dtype=col != "epoch")


def _store_names(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


# --------------------------------------------------------------------------- round trips


def _write(kind: str, table: pd.DataFrame, where: Path) -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if kind == "csv-wide":
        table.to_csv(where / "runs.csv", index=False)
        return [where / "runs.csv"]
    if kind == "tsv-wide":
        table.to_csv(where / "runs.tsv", index=False, sep="\t")
        return [where / "runs.tsv"]
    if kind == "csv-long":
        long = table.melt(id_vars=["seed", "step"], var_name="metric", value_name="value")
        long = long.sample(frac=1.0, random_state=0)  # any row order
        long.to_csv(where / "long.csv", index=False)
        return [where / "long.csv"]
    if kind == "parquet-one":
        table.to_parquet(where / "runs.parquet", index=False)
        return [where / "runs.parquet"]
    if kind == "parquet-per-run":
        for seed, run in table.groupby("seed"):
            run.drop(columns="seed").iloc[::-1].to_parquet(where / f"seed-{seed:03d}.parquet", index=False)
        return [where]
    if kind == "csv-per-run":
        paths = []
        for seed, run in table.groupby("seed"):
            paths.append(where / f"seed-{seed:03d}.csv")
            run.drop(columns="seed").to_csv(paths[-1], index=False)
        return paths
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["csv-wide", "tsv-wide", "csv-long", "parquet-one", "parquet-per-run", "csv-per-run"])
def test_tables_round_trip_exactly(original, tmp_path, kind, capsys):
    study, table = original
    paths = _write(kind, table, tmp_path / "in")
    assert _import(tmp_path / "store", "table", *paths, "--study", "imp", "--convergence", "val_acc>0.9") == 0
    out = capsys.readouterr().out
    _same_tables(_imported(tmp_path / "store"), table)
    meta = Study(tmp_path / "store" / "imp").read_meta()
    assert meta["features"] == list(REFERENCE_COLUMNS)
    assert meta["convergence"] == {"metric": "val_acc", "threshold": 0.9, "direction": "above"}
    assert meta["seeds"] == list(range(10))
    assert meta["source"]["kind"] == "table"
    assert meta["source"]["layout"] == ("long" if "long" in kind else "wide")
    assert "imported 10 runs" in out and "500 rows" in out and "10 of 10 runs converge" in out
    assert "next: latent fit --store" in out and "--study imp" in out
    assert _store_names(tmp_path / "store") == [".imp.lock", "imp"]


def _write_tensorboard(table: pd.DataFrame, where: Path, tag=lambda c: c) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for seed, run in table.groupby("seed"):
        writer = SummaryWriter(str(where / f"seed-{seed:03d}"))
        for row in run.itertuples(index=False):
            for col in [*REFERENCE_COLUMNS, "val_acc"]:
                writer.add_scalar(tag(col), getattr(row, col), int(row.step))
        writer.add_histogram("weights", np.arange(5.0), 0)  # not a scalar: ignored
        writer.close()


def _fit(study_dir: Path) -> tuple[int, pd.DataFrame]:
    assert main(["fit", "--study", str(study_dir), *FIT]) == 0
    (fit_dir,) = (study_dir / "fits").iterdir()
    model = json.loads((fit_dir / "model.json").read_text())
    paths = pd.read_parquet(fit_dir / "paths.parquet")
    return model["n_states"], paths[["seed", "step", "state"]]


@pytest.fixture(scope="module")
def original_fit(original):
    """K and the decoded paths of the original study."""
    study, _ = original
    return _fit(study.root)


def test_fit_of_an_imported_table_is_the_fit_of_the_original(original, original_fit, tmp_path, capsys):
    study, table = original
    k_orig, paths_orig = original_fit
    csv = _write("csv-wide", table, tmp_path / "csv")
    assert _import(tmp_path / "store", "table", *csv, "--study", "imp", "--convergence", "val_acc>0.9") == 0
    k_csv, paths_csv = _fit(tmp_path / "store" / "imp")
    assert k_csv == k_orig >= 2
    pd.testing.assert_frame_equal(paths_csv, paths_orig)  # the same numbers, so exactly the same fit
    # latent compare and latent report take the imported study as they take a collected one
    capsys.readouterr()
    cmp_flags = [f for f in FIT if f != "-q"]
    assert main(["compare", str(study.root), str(tmp_path / "store" / "imp"), *cmp_flags, "--no-fit",
                 "--out", str(tmp_path / "cmp")]) == 0
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert "imp" in json.dumps(data) and (tmp_path / "cmp" / "index.html").is_file()
    assert main(["report", "--study", str(tmp_path / "store" / "imp")]) == 0
    assert list((tmp_path / "store" / "imp" / "reports").glob("*/index.html"))


@needs_tensorboard
def test_fit_of_an_imported_tensorboard_log_matches_the_original(original, original_fit, tmp_path):
    study, table = original
    k_orig, paths_orig = original_fit
    # float32 values, tags with a '/' mapped to columns, the rule and features given by tag names
    _write_tensorboard(table, tmp_path / "tb", tag=lambda c: "eval/acc" if c == "val_acc" else f"weights/{c}")
    assert _import(tmp_path / "store", "tensorboard", tmp_path / "tb", "--study", "tb",
                   "--convergence", "eval/acc>0.9", "--features",
                   ",".join(f"weights/{c}" for c in REFERENCE_COLUMNS)) == 0
    meta = Study(tmp_path / "store" / "tb").read_meta()
    assert meta["features"] == [f"weights_{c}" for c in REFERENCE_COLUMNS]
    assert meta["convergence"]["metric"] == "eval_acc"
    assert meta["source"]["renamed"]["eval/acc"] == "eval_acc"
    k_tb, paths_tb = _fit(tmp_path / "store" / "tb")
    assert k_tb == k_orig
    agree = (paths_tb["state"].to_numpy() == paths_orig["state"].to_numpy()).mean()
    assert agree > 0.99, agree


@needs_tensorboard
def test_tensorboard_round_trips_within_float32(original, tmp_path, capsys):
    study, table = original
    _write_tensorboard(table, tmp_path / "tb")
    assert _import(tmp_path / "store", "tensorboard", tmp_path / "tb", "--study", "imp",
                   "--convergence", "val_acc>0.9") == 0
    imported = _imported(tmp_path / "store")
    _same_tables(imported, table[["seed", "step", *REFERENCE_COLUMNS, "val_acc"]], rtol=2e-7)
    meta = Study(tmp_path / "store" / "imp").read_meta()
    assert meta["features"] == list(REFERENCE_COLUMNS)
    assert meta["source"]["kind"] == "tensorboard"
    assert sorted(meta["source"]["runs"]) == [f"seed-{s:03d}" for s in range(10)]
    assert meta["runs"]["3"] == "seed-003"
    assert "weights" not in imported.columns  # the histogram


@needs_tensorboard
def test_tensorboard_tags_choose_columns_and_event_files_work_alone(original, tmp_path, capsys):
    study, table = original
    _write_tensorboard(table[table["seed"] < 2], tmp_path / "tb", tag=lambda c: f"stats/{c}")
    files = sorted((tmp_path / "tb").rglob("*tfevents*"))
    assert _import(tmp_path / "store", "tensorboard", *files, "--study", "imp", "--tags", "stats/l*",
                   "--tags", "stats_val_acc") == 0
    imported = _imported(tmp_path / "store")
    assert [c for c in imported.columns if c not in ("seed", "step")] == ["stats_l1", "stats_l2", "stats_val_acc"]
    meta = Study(tmp_path / "store" / "imp").read_meta()
    assert meta["features"] == ["stats_l1", "stats_l2", "stats_val_acc"] and meta["convergence"] is None
    out = capsys.readouterr().out
    assert "convergence: none recorded" in out and "--metric" in out


@needs_tensorboard
def test_tensorboard_scalar_tensors_and_subdirectories_are_read(tmp_path):
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    from torch.utils.tensorboard import SummaryWriter

    for run in ("a", "b"):
        for sub, offset in (("train", 0.0), ("validation", 100.0)):
            writer = SummaryWriter(str(tmp_path / "tb" / run / sub))
            for step in range(4):
                value = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[offset + step],
                                               tensor_shape=tensor_shape_pb2.TensorShapeProto())
                meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
                    plugin_name="scalars"))
                summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="epoch_loss", tensor=value,
                                                                               metadata=meta)])
                writer._get_file_writer().add_summary(summary, step)  # how TF2's tf.summary.scalar logs
            writer.close()
    assert _import(tmp_path / "store", "tensorboard", tmp_path / "tb", "--study", "imp") == 0
    imported = _imported(tmp_path / "store")
    assert list(imported.columns) == ["seed", "step", "train_epoch_loss", "validation_epoch_loss"]
    assert imported["validation_epoch_loss"].tolist() == [100.0, 101.0, 102.0, 103.0] * 2
    assert Study(tmp_path / "store" / "imp").read_meta()["runs"] == {"0": "a", "1": "b"}


# --------------------------------------------------------------------------- mappings


def test_column_mapping_and_seed_assignment(tmp_path, capsys):
    rows = []
    for run in ("b", "run10", "a", "run2"):
        for step in (200, 0, 100):
            rows.append({"run_name": run, "global_step": step, "epoch": step / 100, "eval/acc": step / 200 + 0.01,
                         "loss": step * 0.5 + len(run), "note": "x"})
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    assert _import(tmp_path / "store", "table", tmp_path / "runs.csv", "--study", "imp", "--run-col", "run_name",
                   "--convergence", "eval_acc>=0.5") == 0
    captured = capsys.readouterr()
    study = Study(tmp_path / "store" / "imp")
    meta = study.read_meta()
    assert meta["runs"] == {"0": "a", "1": "b", "2": "run2", "3": "run10"}  # natural order
    assert meta["features"] == ["loss"]  # not the step-like epoch, not the convergence metric
    assert meta["metrics"] == ["epoch", "eval_acc", "loss"]
    assert meta["source"]["renamed"] == {"eval/acc": "eval_acc"}
    assert meta["source"]["step_column"] == "global_step" and meta["step_unit"] == "step"
    run = study.read_run(2)
    assert run["step"].tolist() == [0, 100, 200] and run["loss"].tolist() == [4.0, 54.0, 104.0]
    assert "left out the column(s) note" in captured.err
    assert "1=b" in captured.out


def test_numeric_run_names_are_the_seeds_and_epoch_steps(tmp_path):
    frame = pd.DataFrame({"seed": [7, 7, 3, 3], "epoch": [0.0, 1.0, 0.0, 1.0], "loss": [1.0, 0.5, 2.0, 1.5]})
    frame.to_csv(tmp_path / "runs.csv", index=False)
    assert _import(tmp_path / "store", "table", tmp_path / "runs.csv", "--study", "imp") == 0
    meta = Study(tmp_path / "store" / "imp").read_meta()
    assert meta["seeds"] == [3, 7] and "runs" not in meta and meta["step_unit"] == "epoch"
    assert _imported(tmp_path / "store")["loss"].tolist() == [2.0, 1.5, 1.0, 0.5]


def test_drop_incomplete_and_features(tmp_path, capsys):
    frame = pd.DataFrame({"run": ["a"] * 4 + ["b"] * 4, "step": [0, 1, 2, 3] * 2,
                          "x": [1.0, np.nan, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0], "y": np.arange(8.0),
                          "acc": [np.nan, 0.5, 0.7, 1.0] * 2})
    frame.to_csv(tmp_path / "runs.csv", index=False)
    assert _import(tmp_path / "store", "table", tmp_path / "runs.csv", "--study", "one", "--features", "y",
                   "--convergence", "acc>0.9") == 0  # x is not a feature: its gap is fine
    assert _imported(tmp_path / "store", "one")["x"].isna().sum() == 1
    assert _import(tmp_path / "store", "table", tmp_path / "runs.csv", "--study", "two", "--drop-incomplete",
                   "--convergence", "acc>0.9") == 0
    err = capsys.readouterr().err
    assert "dropped checkpoints missing a feature" in err and "run 'a': 1" in err
    assert "fewer checkpoints than the longest" in err and "--allow-partial" in err
    assert _imported(tmp_path / "store", "two").groupby("seed").size().tolist() == [3, 4]


def test_different_step_grids_are_a_warning_naming_the_runs(tmp_path, capsys):
    for name, steps in (("a", [0, 10, 20]), ("b", [0, 10, 20]), ("c", [0, 5, 20])):
        pd.DataFrame({"step": steps, "loss": [3.0, 2.0, 1.0]}).to_csv(tmp_path / f"{name}.csv", index=False)
    assert _import(tmp_path / "store", "table", tmp_path, "--study", "imp") == 0
    err = capsys.readouterr().err
    assert "warning: runs c (seed 2) log their checkpoints at other steps" in err


# --------------------------------------------------------------------------- refusals


def _bad_cases(tmp_path: Path):
    """(name, argv after `import`, file that must be named, phrase in the message)."""
    d = tmp_path / "bad"
    d.mkdir()
    cases = []

    def csv(name, frame, **kw):
        path = d / name
        frame.to_csv(path, index=False, **kw)
        return path

    base = pd.DataFrame({"run": ["a", "a", "b", "b"], "step": [0, 1, 0, 1], "loss": [1.0, 2.0, 3.0, 4.0],
                         "val_acc": [0.1, 0.95, 0.2, 0.96]})
    p = csv("nostep.csv", base.drop(columns="step"))
    cases.append(("missing step", ["table", p], p, "has no step column"))
    p = csv("dup.csv", base.assign(step=[0, 0, 0, 1]))
    cases.append(("duplicate step", ["table", p], p, "run 'a' has two rows at step 0"))
    p = csv("text.csv", base.astype({"loss": object}).assign(loss=[1.0, "oops", 3.0, 4.0]))
    cases.append(("non-numeric", ["table", p], p, "run 'a', step 1 (data row 2), column 'loss': 'oops' is not a number"))
    p = csv("fracstep.csv", base.assign(step=[0, 0.5, 0, 1]))
    cases.append(("fractional step", ["table", p], p, "step 0.5 is not a whole number"))
    p = csv("nanfeature.csv", base.assign(loss=[1.0, np.nan, 3.0, 4.0]))
    cases.append(("missing feature", ["table", p, "--convergence", "val_acc>0.9"], p,
                  "run 'a', step 1, column 'loss': the value is missing"))
    p = d / "empty.csv"
    p.write_text("step,loss\n")
    cases.append(("empty run", ["table", p], p, "no rows"))
    p = csv("nocol.csv", base.assign(val_acc=[0.1, 0.9, np.nan, np.nan]))
    cases.append(("mismatched columns", ["table", p, "--features", "loss", "--convergence", "val_acc>0.5"], p,
                  "run 'b' has no values in the column(s) val_acc"))
    (d / "per").mkdir()
    pd.DataFrame({"step": [0, 1], "loss": [1.0, 2.0], "val_acc": [0.1, 0.9]}).to_csv(d / "per" / "r1.csv", index=False)
    pd.DataFrame({"step": [0, 1], "loss": [1.0, 2.0]}).to_csv(d / "per" / "r2.csv", index=False)
    cases.append(("mismatched files", ["table", d / "per"], d / "per" / "r2.csv", "run 'r2' has no values"))
    p = csv("good.csv", base)
    cases.append(("unknown convergence metric", ["table", p, "--convergence", "val_accuracy>0.9"], p,
                  "unknown convergence metric 'val_accuracy'"))
    cases.append(("bad convergence form", ["table", p, "--convergence", "val_acc=0.9"], p, "METRIC>THRESHOLD"))
    cases.append(("missing --step-col", ["table", p, "--step-col", "iter"], p, "has no column 'iter' (named by --step-col)"))
    cases.append(("bad seed column", ["table", p, "--seed-col", "run"], p, "seed"))
    p = d / "notatable.txt"
    p.write_text("x")
    cases.append(("unknown suffix", ["table", p], p, "not a table file"))
    p = d / "broken.parquet"
    p.write_bytes(b"PAR1 not really")
    cases.append(("corrupt parquet", ["table", p], p, "cannot read it as parquet"))
    p = csv("longdup.csv", pd.DataFrame({"run": ["a", "a"], "step": [0, 0], "metric": ["loss", "loss"],
                                          "value": [1.0, 2.0]}))
    cases.append(("long duplicate", ["table", p], p, "metric 'loss' has two values at this step"))
    p = csv("longtext.csv", pd.DataFrame({"run": ["a", "a"], "step": [0, 1], "metric": ["loss", "loss"],
                                           "value": ["1.0", "two"]}))
    cases.append(("long non-numeric", ["table", p], p, "run 'a', step 1 (data row 2), metric 'loss': 'two' is not a number"))
    p = d / "nologs"
    p.mkdir()
    cases.append(("no event files", ["tensorboard", p], p, "no TensorBoard event files"))
    return cases


def test_every_refusal_is_one_line_exit_2_naming_the_file_and_leaves_nothing(tmp_path, capsys):
    store = tmp_path / "store"
    for name, argv, path, phrase in _bad_cases(tmp_path):
        code = _import(store, *argv, "--study", "imp")
        err = capsys.readouterr().err
        assert code == 2, name
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("latent import: error: "), (name, err)
        assert phrase in lines[0], (name, lines[0])
        if "convergence" not in name or "unknown" in name:
            assert str(path) in lines[0], (name, lines[0])
        assert [n for n in _store_names(store) if not n.endswith(".lock")] == [], name


@needs_tensorboard
def test_tensorboard_refusals(original, tmp_path, capsys, monkeypatch):
    study, table = original
    _write_tensorboard(table[table["seed"] < 2], tmp_path / "tb")
    store = tmp_path / "store"
    assert _import(store, "tensorboard", tmp_path / "tb", "--study", "imp", "--tags", "nothing*") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--tags 'nothing*' matches no scalar tag" in err and str(tmp_path / "tb") in err
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "dup" / "r0"))
    writer.add_scalar("loss", 1.0, 0)
    writer.add_scalar("loss", 2.0, 0)  # logged twice at step 0 (a resumed run)
    writer.close()
    assert _import(store, "tensorboard", tmp_path / "dup", "--study", "imp") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "dup" / "r0") in err and "tag 'loss' has two values at step 0" in err
    writer = SummaryWriter(str(tmp_path / "hist" / "r0"))
    writer.add_histogram("w", np.arange(4.0), 0)
    writer.close()
    assert _import(store, "tensorboard", tmp_path / "hist", "--study", "imp") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "hist" / "r0") in err and "has no scalar events" in err
    monkeypatch.setitem(sys.modules, "tbparse", None)  # as if not installed
    assert _import(store, "tensorboard", tmp_path / "tb", "--study", "imp") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and 'pip install -e ".[tensorboard]"' in err
    assert _store_names(store) in ([], [".imp.lock"])


def test_an_existing_study_is_refused_and_overwrite_replaces_it(original, tmp_path, capsys):
    study, table = original
    paths = _write("csv-wide", table, tmp_path / "in")
    store = tmp_path / "store"
    assert _import(store, "table", *paths, "--study", "imp") == 0
    before = {p: p.read_bytes() for p in (store / "imp").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _import(store, "table", *paths, "--study", "imp") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "study 'imp' already exists" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in (store / "imp").rglob("*") if p.is_file()} == before
    small = table[table["seed"] < 3]
    small.to_csv(tmp_path / "small.csv", index=False)
    assert _import(store, "table", tmp_path / "small.csv", "--study", "imp", "--overwrite") == 0
    _same_tables(_imported(store), small.reset_index(drop=True))
    assert _store_names(store) == [".imp.lock", "imp"]


def test_a_kill_during_the_write_leaves_nothing_and_keeps_the_old_study(original, tmp_path, capsys, monkeypatch):
    study, table = original
    paths = _write("csv-wide", table, tmp_path / "in")
    store = tmp_path / "store"
    real = external.atomic_write_json

    def killed_at_study_json(path, obj, **kwargs):
        if Path(path).name == "study.json":
            raise KeyboardInterrupt  # Ctrl-C after every run is staged, before the study is complete
        real(path, obj, **kwargs)

    monkeypatch.setattr(external, "atomic_write_json", killed_at_study_json)
    assert _import(store, "table", *paths, "--study", "imp") == 130
    assert _store_names(store) == [".imp.lock"]
    monkeypatch.setattr(external, "atomic_write_json", real)
    assert _import(store, "table", *paths, "--study", "imp") == 0
    before = {p: p.read_bytes() for p in (store / "imp").rglob("*") if p.is_file()}
    monkeypatch.setattr(external, "atomic_write_json", killed_at_study_json)
    small = tmp_path / "small.csv"
    table[table["seed"] < 3].to_csv(small, index=False)
    assert _import(store, "table", small, "--study", "imp", "--overwrite") == 130
    assert {p: p.read_bytes() for p in (store / "imp").rglob("*") if p.is_file()} == before
    assert _store_names(store) == [".imp.lock", "imp"]
    capsys.readouterr()


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_runs(where: Path) -> dict[str, dict[int, dict]]:
    """Two runs of a 4-8-3 MLP: run-a as .pt state dicts, run-b as Hugging Face checkpoint-N/ folders."""
    import torch
    from safetensors.torch import save_file

    states: dict[str, dict[int, dict]] = {}
    for r, run in enumerate(("run-a", "run-b")):
        gen = torch.Generator().manual_seed(r)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        (where / run).mkdir(parents=True)
        states[run] = {}
        for step in (0, 50, 100, 150):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
            states[run][step] = sd
            if run == "run-a":
                torch.save(sd, where / run / f"step-{step}.pt")
            else:
                (where / run / f"checkpoint-{step}").mkdir()
                save_file(sd, str(where / run / f"checkpoint-{step}" / "model.safetensors"))
        if run == "run-b":
            history = [{"step": s, "eval_accuracy": s / 150, "epoch": s / 50} for s in (50, 100, 150)]
            (where / run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return states


def test_checkpoints_import_joins_a_metrics_table(tmp_path, capsys):
    from latent.collect.checkpoints import checkpoint_runs

    states = _checkpoint_runs(tmp_path / "ckpt")
    metrics = pd.DataFrame([{"run": run, "step": step, "val_acc": 0.3 + step / 200 + 0.01 * i}
                            for i, run in enumerate(("run-a", "run-b")) for step in (0, 50, 100, 150, 200)])
    metrics.to_csv(tmp_path / "val.csv", index=False)
    assert _import(tmp_path / "store", "checkpoints", tmp_path / "ckpt", "--study", "ck", "--metrics-table",
                   tmp_path / "val.csv", "--convergence", "val_acc>0.9") == 0
    captured = capsys.readouterr()
    study = Study(tmp_path / "store" / "ck")
    meta = study.read_meta()
    assert meta["features"] == list(REFERENCE_COLUMNS)
    assert meta["runs"] == {"0": "run-a", "1": "run-b"} and meta["source"]["kind"] == "checkpoints"
    assert meta["source"]["metrics_table"] == str(tmp_path / "val.csv")
    # eval_accuracy and epoch come from run-b's trainer_state.json only: left out, with a warning
    assert "left out the column(s) epoch, eval_accuracy: run(s) run-a have no values" in captured.err
    assert "ignored" not in captured.err  # every metrics run has checkpoints
    assert "2 of 2 runs converge" in captured.out
    want = checkpoint_runs([tmp_path / "ckpt"], progress=False)
    for seed, run in enumerate(("run-a", "run-b")):
        got = study.read_run(seed)
        assert got["step"].tolist() == [0, 50, 100, 150]
        pd.testing.assert_frame_equal(got[list(REFERENCE_COLUMNS)], want[run][list(REFERENCE_COLUMNS)])
        # independent truth: the joined metric lands on its step, and l1 is the mean over matrices of sum |w|
        assert got["val_acc"].tolist() == [0.3 + s / 200 + 0.01 * seed for s in (0, 50, 100, 150)]
        for i, step in enumerate((0, 50, 100, 150)):
            sd = states[run][step]
            l1 = np.mean([sd["0.weight"].double().abs().sum().item(), sd["2.weight"].double().abs().sum().item()])
            assert got["l1"].iloc[i] == pytest.approx(l1, rel=1e-6)


def test_checkpoints_refusals_name_the_file(tmp_path, capsys):
    _checkpoint_runs(tmp_path / "ckpt")
    store = tmp_path / "store"
    pd.DataFrame({"run": ["other"], "step": [0], "val_acc": [0.5]}).to_csv(tmp_path / "val.csv", index=False)
    assert _import(store, "checkpoints", tmp_path / "ckpt", "--study", "ck", "--metrics-table",
                   tmp_path / "val.csv") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "val.csv") in err and "no rows for the checkpoint run 'run-a'" in err
    (tmp_path / "ckpt" / "run-a" / "step-50.pt").write_bytes(b"not a checkpoint")
    assert _import(store, "checkpoints", tmp_path / "ckpt", "--study", "ck") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "ckpt" / "run-a" / "step-50.pt") in err
    assert [n for n in _store_names(store) if not n.endswith(".lock")] == []


def test_fit_of_an_import_with_a_short_run_says_re_import_not_collect(tmp_path, capsys):
    from latent.cli import main as cli_main
    from latent.external import external_meta, write_external_study
    from latent.simulate import SimConfig, simulate

    table, _ = simulate(SimConfig(n_runs=6, n_checkpoints=60, seed=3))
    tables = {int(s): r.reset_index(drop=True) for s, r in table.groupby("seed")}
    tables[2] = tables[2].head(40)  # one run stopped early
    cols = [c for c in table.columns if c != "seed"]
    meta = external_meta("short", sorted(tables), cols, source={"kind": "test"},
                         convergence={"metric": "val_acc", "threshold": 0.9, "direction": "above"})
    write_external_study(tmp_path, "short", tables, meta)
    capsys.readouterr()
    assert cli_main(["fit", "--store", str(tmp_path), "--study", "short"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "re-import" in err and "latent collect" not in err and "--allow-partial" in err


# --------------------------------------------------------------------------- size


def test_table_shape_counts_parquet_exactly_and_estimates_csv_rows(tmp_path):
    from latent.importers.tables import table_shape

    rng = np.random.default_rng(0)
    # lines of very different lengths, so a head that is not representative would show
    frame = pd.DataFrame({"run": np.repeat(["a", "bb"], 6000), "step": np.tile(np.arange(6000), 2),
                          "x": rng.normal(size=12000) * 10.0 ** rng.integers(-3, 6, 12000)})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.head(3).to_csv(tmp_path / "small.tsv", sep="\t", index=False)
    # quoted fields holding newlines count once; a header longer than the 64 KiB sample is read on
    notes = frame.assign(note="line 1\nline 2\nline 3\nline 4")
    notes.to_csv(tmp_path / "notes.csv", index=False)
    wide = pd.DataFrame(rng.normal(size=(200, 2500)), columns=[f"a_rather_long_metric_name_{i}" for i in range(2500)])
    wide.to_csv(tmp_path / "wide.csv", index=False)
    rows, cols = table_shape(tmp_path / "notes.csv")
    assert cols == 4 and abs(rows - 12000) < 0.1 * 12000
    rows, cols = table_shape(tmp_path / "wide.csv")
    assert cols == 2500 and abs(rows - 200) < 0.1 * 200
    assert table_shape(tmp_path / "t.parquet") == (12000, 3)
    rows, cols = table_shape(tmp_path / "t.csv")
    assert cols == 3 and abs(rows - 12000) < 0.1 * 12000
    assert table_shape(tmp_path / "small.tsv") == (3, 3)  # whole file read: exact


def test_tables_too_big_for_free_memory_are_refused_before_reading(original, tmp_path, capsys, monkeypatch):
    import latent.memory
    from latent.importers import tables

    study, table = original
    paths = _write("parquet-one", table, tmp_path / "in")
    values = len(table) * table.shape[1]
    read = []
    monkeypatch.setattr(tables, "read_frame", lambda p: read.append(p))  # must not be reached
    monkeypatch.setattr(latent.memory, "available_bytes", lambda: values * tables.PEAK_BYTES_PER_VALUE // 2)
    store = tmp_path / "store"
    assert _import(store, "table", *paths, "--study", "imp") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "importing needs about" in err[0] and "free" in err[0], err
    assert f"{len(table):,} rows × {table.shape[1]} columns" in err[0]
    assert read == [] and _store_names(store) == []


def test_running_out_of_memory_is_one_line_and_leaves_the_store_as_it_was(original, tmp_path, capsys, monkeypatch):
    study, table = original
    paths = _write("csv-wide", table, tmp_path / "in")
    store = tmp_path / "store"
    assert _import(store, "table", *paths, "--study", "imp") == 0
    before = {p: p.read_bytes() for p in (store / "imp").rglob("*") if p.is_file()}

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(external, "_build", no_memory)
    capsys.readouterr()
    assert _import(store, "table", *paths, "--study", "imp", "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latent import: error: ran out of memory"), err
    assert {p: p.read_bytes() for p in (store / "imp").rglob("*") if p.is_file()} == before
    assert _store_names(store) == [".imp.lock", "imp"]


def test_many_runs_in_one_table_split_exactly(tmp_path):
    """The one-pass split keeps every run's rows, in step order, whatever order the rows come in."""
    rng = np.random.default_rng(1)
    runs, steps = 300, 7
    frame = pd.DataFrame({"run": np.repeat([f"r{i}" for i in range(runs)], steps),
                          "step": np.tile(np.arange(steps) * 5, runs), "x": rng.normal(size=runs * steps),
                          "val_acc": rng.uniform(size=runs * steps)})
    shuffled = frame.sample(frac=1.0, random_state=2)
    shuffled.to_csv(tmp_path / "runs.csv", index=False)
    assert _import(tmp_path / "store", "table", tmp_path / "runs.csv", "--study", "imp",
                   "--convergence", "val_acc>0.5") == 0
    got = _imported(tmp_path / "store")
    meta = json.loads((tmp_path / "store" / "imp" / "study.json").read_text())
    names = {int(s): n for s, n in meta["runs"].items()}
    assert len(names) == runs
    for seed, part in got.groupby("seed"):
        want = frame[frame["run"] == names[seed]].sort_values("step")
        np.testing.assert_array_equal(part["step"].to_numpy(), want["step"].to_numpy())
        np.testing.assert_array_equal(part["x"].to_numpy(), want["x"].to_numpy())


@pytest.mark.parametrize("column,value,needle", [("step", -5, "step -5 is negative"),
                                                  ("step", 1e19, "step 1e+19 is too large"),
                                                  ("seed", -1, "seed -1 is negative")])
def test_negative_or_huge_steps_and_seeds_are_refused_in_one_line(original, tmp_path, capsys, column, value, needle):
    """A run manifest holds its last step as a count: an import must not write one its reader refuses."""
    study, table = original
    bad = table.copy()
    bad[column] = bad[column].astype(float)
    bad.loc[7, column] = value
    bad.to_csv(tmp_path / "runs.csv", index=False)
    store = tmp_path / "store"
    argv = ["--seed-col", "seed"] if column == "seed" else []
    assert _import(store, "table", tmp_path / "runs.csv", "--study", "imp", *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "data row 8" in err[0], err
    assert _store_names(store) == []
