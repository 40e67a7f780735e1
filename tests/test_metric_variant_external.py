"""``metric_variant`` beyond ``latent collect``: the Recorder, the checkpoint import and the callbacks.

The expected values are computed here from the model's weights with numpy alone: the module
rules take every ``nn.Linear`` weight as a matrix (and into ``w_all``) and its bias into
``b_all`` (collect/modules.py); ``"paper"`` makes ``var_w``/``var_b`` population variances and
``mean_lambda``/``variance_lambda`` the mean and population variance of every matrix's
singular values (those below 1e-5 zeroed) pooled; ``"reference"`` keeps the unbiased variances
and the means over matrices of each matrix's mean and unbiased variance (reference.md B1-B5, J1).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from latent.collect.checkpoints import checkpoint_runs
from latent.collect.recorder import Recorder
from latent.cli import main
from latent.errors import UserError
from latent.store import REFERENCE_COLUMNS, Study

#: The columns the variant changes; the other ten are the same in both.
CHANGED = ("mean_lambda", "variance_lambda", "var_w", "var_b")
SAME = tuple(c for c in REFERENCE_COLUMNS if c not in CHANGED)
LAYERS = ("0", "2", "4")  # the Linear layers of _mlp, by state-dict prefix


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _mlp(seed: int = 0) -> nn.Sequential:
    """7x5, 3x7 and 1x3 weight matrices: 5 + 3 + 1 singular values, one matrix with only one."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 1))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def expected(state: dict[str, torch.Tensor], variant: str) -> dict[str, float]:
    """The four columns the variant changes, from the Linear weights and biases with numpy."""
    mats = [state[f"{layer}.weight"].double().numpy() for layer in LAYERS]
    biases = np.concatenate([state[f"{layer}.bias"].double().numpy().ravel() for layer in LAYERS])
    weights = np.concatenate([m.ravel() for m in mats])
    svals = []
    for m in mats:
        s = np.linalg.svd(m, compute_uv=False)
        svals.append(np.where(s < 1e-5, 0.0, s))
    if variant == "paper":
        pool = np.concatenate(svals)
        return {"var_w": weights.var(ddof=0), "var_b": biases.var(ddof=0),
                "mean_lambda": pool.mean(), "variance_lambda": pool.var(ddof=0)}
    per_matrix_var = [s.var(ddof=1) for s in svals if len(s) > 1]  # one value: NaN, skipped
    return {"var_w": weights.var(ddof=1), "var_b": biases.var(ddof=1),
            "mean_lambda": np.mean([s.mean() for s in svals]), "variance_lambda": np.mean(per_matrix_var)}


def assert_changed(row, state, variant: str, where: str = "") -> None:
    want = expected(state, variant)
    for col in CHANGED:  # singular values come from a float64 Gram eigensolver (~1e-8 relative)
        tol = 1e-7 if col.endswith("lambda") else 1e-10
        assert float(row[col]) == pytest.approx(want[col], rel=tol, abs=1e-12), f"{where} {variant} {col}"


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# --------------------------------------------------------------------------- the Recorder


def test_recorder_rows_follow_the_variant_against_numpy(tmp_path):
    model = _mlp()
    state = _state(model)
    rows = {}
    for variant in ("reference", "paper"):
        with Recorder(tmp_path, study=f"mlp-{variant}", seed=0, metric_variant=variant) as rec:
            rows[variant] = rec.log(0, model, val_acc=0.5)
            assert rec.metrics(state) == {c: rows[variant][c] for c in REFERENCE_COLUMNS}  # state dict path too
        assert_changed(rows[variant], state, variant)
    # the numbers differ where they must (pooled 9 values vs 3 matrices; n vs n - 1)
    for col in CHANGED:
        assert rows["paper"][col] != rows["reference"][col], col
    n_w, n_b = 7 * 5 + 3 * 7 + 3, 7 + 3 + 1
    assert rows["paper"]["var_w"] == pytest.approx(rows["reference"]["var_w"] * (n_w - 1) / n_w, rel=1e-12)
    assert rows["paper"]["var_b"] == pytest.approx(rows["reference"]["var_b"] * (n_b - 1) / n_b, rel=1e-12)
    for col in SAME:  # the other ten are the same numbers, bit for bit
        assert rows["paper"][col] == rows["reference"][col], col
    # and the default is the reference
    with Recorder(tmp_path, study="mlp-default", seed=0) as rec:
        default = rec.log(0, model)
    assert {c: default[c] for c in REFERENCE_COLUMNS} == {c: rows["reference"][c] for c in REFERENCE_COLUMNS}
    assert Study(tmp_path / "mlp-default").read_meta()["metric_variant"] == "reference"


def test_recorder_records_the_variant_and_refuses_another(tmp_path):
    with Recorder(tmp_path, study="s", seed=0, metric_variant="paper") as rec:
        rec.log(0, _mlp())
    study = Study(tmp_path / "s")
    meta = study.read_meta()
    assert meta["metric_variant"] == "paper" and meta["source"]["kind"] == "recorder"
    before = study.study_file.read_bytes()
    for other in ({"metric_variant": "reference"}, {}):  # given, and the default
        with pytest.raises(UserError) as info:
            Recorder(tmp_path, study="s", seed=1, **other)
        text = _one_line(info)
        assert "metric_variant='paper'" in text and "not 'reference'" in text
    assert study.study_file.read_bytes() == before and not study.run_manifest_path(1).exists()
    # the refused recorders released seed 1: the study's own variant records it
    with Recorder(tmp_path, study="s", seed=1, metric_variant="paper") as rec:
        row = rec.log(0, _mlp(1))
    assert_changed(row, _state(_mlp(1)), "paper")
    assert study.read_meta()["seeds"] == [0, 1] and study.read_meta()["metric_variant"] == "paper"


def test_recorder_study_from_before_variants_is_reference(tmp_path):
    with Recorder(tmp_path, study="old", seed=0) as rec:
        rec.log(0, _mlp())
    study = Study(tmp_path / "old")
    study.write_meta({k: v for k, v in study.read_meta().items() if k != "metric_variant"})
    with pytest.raises(UserError) as info:
        Recorder(tmp_path, study="old", seed=1, metric_variant="paper")
    assert "metric_variant='reference'" in _one_line(info)
    before = study.study_file.read_bytes()
    with Recorder(tmp_path, study="old", seed=0, resume=True) as rec:  # nothing new: study.json untouched
        rec.log(1, _mlp())
    assert study.study_file.read_bytes() == before
    with Recorder(tmp_path, study="old", seed=1) as rec:  # a new seed rewrites it, now with the key
        rec.log(0, _mlp(1))
    assert study.read_meta()["metric_variant"] == "reference" and study.read_meta()["seeds"] == [0, 1]


@pytest.mark.parametrize("bad", ["pooled", "Paper", None, 1])
def test_recorder_bad_variant_is_one_line_and_touches_nothing(tmp_path, bad):
    with pytest.raises(UserError) as info:
        Recorder(tmp_path / "store", study="s", seed=0, metric_variant=bad)
    assert "metric_variant must be one of reference, paper" in _one_line(info)
    assert not (tmp_path / "store").exists()


# --------------------------------------------------------------------------- checkpoints


def _checkpoints(where: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Three checkpoints of _mlp in one run directory: safetensors, torch, safetensors."""
    model, gen = _mlp(), torch.Generator().manual_seed(5)
    where.mkdir(parents=True)
    states = {}
    for step, suffix in ((0, "safetensors"), (10, "pt"), (20, "safetensors")):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        states[step] = _state(model)
        path = where / f"step-{step}.{suffix}"
        if suffix == "safetensors":
            save_file(states[step], str(path))
        else:
            torch.save(states[step], path)
    return states


def test_checkpoint_runs_paper_rows_equal_the_recorders(tmp_path):
    states = _checkpoints(tmp_path / "ckpt" / "run-a")
    tables = {v: checkpoint_runs(tmp_path / "ckpt" / "run-a", metric_variant=v, progress=False)["run-a"]
              for v in ("reference", "paper")}
    with Recorder(tmp_path / "store", study="rec", seed=0, metric_variant="paper") as rec:
        for step, state in states.items():
            rec.log(step, state)
    recorded = rec.table()
    assert tables["paper"]["step"].tolist() == recorded["step"].tolist() == [0, 10, 20]
    np.testing.assert_array_equal(tables["paper"][list(REFERENCE_COLUMNS)].to_numpy(),
                                  recorded[list(REFERENCE_COLUMNS)].to_numpy())
    for i, (step, state) in enumerate(states.items()):
        for variant, table in tables.items():
            assert_changed(table.iloc[i], state, variant, f"step {step}")
    np.testing.assert_array_equal(tables["paper"][list(SAME)].to_numpy(), tables["reference"][list(SAME)].to_numpy())
    # two processes carry the variant too
    forked = checkpoint_runs(tmp_path / "ckpt" / "run-a", metric_variant="paper", workers=2, progress=False)
    np.testing.assert_array_equal(forked["run-a"].to_numpy(), tables["paper"].to_numpy())
    with pytest.raises(UserError) as info:
        checkpoint_runs(tmp_path / "ckpt" / "run-a", metric_variant="pooled", progress=False)
    assert "metric_variant must be one of reference, paper" in _one_line(info)


def _import(store, *argv) -> int:
    return main(["import", *map(str, argv), "--store", str(store)])


def test_import_checkpoints_records_the_variant(tmp_path, capsys):
    states = _checkpoints(tmp_path / "ckpt" / "run-a")
    store = tmp_path / "store"
    assert _import(store, "checkpoints", tmp_path / "ckpt" / "run-a", "--study", "ck",
                   "--metric-variant", "paper") == 0
    assert _import(store, "checkpoints", tmp_path / "ckpt" / "run-a", "--study", "ck-ref") == 0
    paper, ref = Study(store / "ck"), Study(store / "ck-ref")
    assert paper.read_meta()["metric_variant"] == "paper" and ref.read_meta()["metric_variant"] == "reference"
    assert "metric_variant" not in paper.read_meta()["source"]
    want = checkpoint_runs(tmp_path / "ckpt" / "run-a", metric_variant="paper", progress=False)["run-a"]
    got = paper.read_run(0)
    np.testing.assert_array_equal(got[["step", *REFERENCE_COLUMNS]].to_numpy(),
                                  want[["step", *REFERENCE_COLUMNS]].to_numpy())
    for i, state in enumerate(states.values()):
        assert_changed(got.iloc[i], state, "paper")
        assert_changed(ref.read_run(0).iloc[i], state, "reference")
    # a table import of those very columns records no variant: latent did not compute them
    got.to_csv(tmp_path / "table.csv", index=False)
    assert _import(store, "table", tmp_path / "table.csv", "--study", "tab") == 0
    assert "metric_variant" not in Study(store / "tab").read_meta()


def test_import_checkpoints_bad_variant_exits_2_with_one_line(tmp_path, capsys):
    _checkpoints(tmp_path / "ckpt" / "run-a")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _import(tmp_path / "store", "checkpoints", tmp_path / "ckpt" / "run-a", "--study", "ck",
                "--metric-variant", "pooled")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--metric-variant" in err[0] and "pooled" in err[0], err
    assert not (tmp_path / "store" / "ck").exists()
    # the table and tensorboard imports have no such option
    with pytest.raises(SystemExit) as info:
        _import(tmp_path / "store", "table", tmp_path / "x.csv", "--study", "t", "--metric-variant", "paper")
    assert info.value.code == 2


# --------------------------------------------------------------------------- the callbacks


def _check_callback_recorder(cb, store: Path, model: nn.Module) -> None:
    assert cb.recorder.metric_variant == "paper"
    row = cb.recorder.table().iloc[0]
    assert_changed(row, _state(model), "paper")
    assert Study(store / "cb").read_meta()["metric_variant"] == "paper"


def test_hf_callback_passes_the_variant_to_its_recorder(tmp_path):
    from latent.collect.integrations.hf import LatentCallback

    model = _mlp()
    cb = LatentCallback(tmp_path, study="cb", metric_variant="paper")
    args, state = SimpleNamespace(seed=4), SimpleNamespace(is_world_process_zero=True, global_step=0)
    cb.on_train_begin(args, state, None, model=model)  # what the Trainer calls first: logs the initial weights
    _check_callback_recorder(cb, tmp_path, model)
    cb.on_train_end(args, state, None, model=model)
    assert Study(tmp_path / "cb").read_meta()["seeds"] == [4]
    with pytest.raises(UserError) as info:
        LatentCallback(tmp_path, study="cb", metric_variant="pooled")
    assert "metric_variant must be one of reference, paper" in _one_line(info)


def test_lightning_callback_passes_the_variant_to_its_recorder(tmp_path):
    from latent.collect.integrations.lightning import LatentCallback

    model = _mlp()
    cb = LatentCallback(tmp_path, study="cb", seed=2, metric_variant="paper")
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, callback_metrics={"train_loss": torch.tensor(1.5)})
    cb.on_train_start(trainer, model)  # logs the initial weights
    _check_callback_recorder(cb, tmp_path, model)
    assert math.isclose(cb.recorder.table()["train_loss"].iloc[0], 1.5)
    cb.on_train_end(trainer, model)
    assert Study(tmp_path / "cb").status()["status"] == "done"
    with pytest.raises(UserError) as info:
        LatentCallback(tmp_path, study="cb", metric_variant="pooled")
    assert "metric_variant must be one of reference, paper" in _one_line(info)
