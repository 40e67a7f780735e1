"""``--metric-variant paper`` (reference.md I, J1): population variances and pooled singular values.

Every expected value is computed here independently of ``latent.collect.metrics``: numpy's full SVD
per matrix, the 1e-5 zeroing by hand, numpy's ``var(ddof=...)``, and pools built by
concatenation, one seed at a time.
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from latent.collect.config import parse_overrides, resolve_config
from latent.collect.metrics import (
    METRIC_VARIANTS,
    REFERENCE_COLUMNS,
    WeightGroups,
    distribution_stats,
    pooled_singular_value_stats,
    reference_metrics,
)
from latent.collect.seeds import RunSeeds
from latent.collect.tasks import get_task
from latent.collect.trainer import train
from latent.cli import build_parser, main
from latent.store import Study

#: The columns whose definition the variant changes; the other ten must not move.
CHANGED = ("mean_lambda", "variance_lambda", "var_w", "var_b")
SAME = tuple(c for c in REFERENCE_COLUMNS if c not in CHANGED)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- brute force


def _thresholded_svals(m: np.ndarray) -> np.ndarray:
    s = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    return np.where(s < 1e-5, 0.0, s)


def brute_columns(matrices, convs, weights, biases, variant):
    """The 14 columns of one seed from plain numpy arrays, straight from reference.md B1-B5 / J1."""
    ddof = 1 if variant == "reference" else 0
    per = {k: [] for k in ("l1", "l2", "trace", "spectral", "code_sparsity", "computational_sparsity")}
    means, variances, pool = [], [], []
    for m in matrices:
        m = np.asarray(m, dtype=np.float64)
        if not np.isfinite(m).all():
            continue  # the reference returns null for this matrix and skips it
        l1, l2 = np.abs(m).sum(), np.sqrt((m * m).sum())
        trace = sum(m[i, i] for i in range(min(m.shape)))
        spectral = np.linalg.svd(m, compute_uv=False)[0]
        s = _thresholded_svals(m)
        per["l1"].append(l1), per["l2"].append(l2), per["trace"].append(trace), per["spectral"].append(spectral)
        per["code_sparsity"].append(l1 / l2), per["computational_sparsity"].append(trace / spectral)
        means.append(s.mean())
        variances.append(s.var(ddof=1) if len(s) > 1 else math.nan)
        pool.extend(s.tolist())
    for c in convs:
        c = np.asarray(c, dtype=np.float64)
        slices = c.reshape(c.shape[0] * c.shape[1], -1)
        l1s, l2s = np.abs(slices).sum(1), np.sqrt((slices * slices).sum(1))
        per["l1"].append(l1s.mean()), per["l2"].append(l2s.mean()), per["code_sparsity"].append((l1s / l2s).mean())
    out = {k: (float(np.mean(v)) if v else math.nan) for k, v in per.items()}
    if variant == "reference":
        out["mean_lambda"] = float(np.mean(means)) if means else math.nan
        finite_vars = [v for v in variances if not math.isnan(v)]
        out["variance_lambda"] = float(np.mean(finite_vars)) if finite_vars else math.nan
    else:
        out["mean_lambda"] = float(np.mean(pool)) if pool else math.nan
        out["variance_lambda"] = float(np.var(pool, ddof=0)) if pool else math.nan
    for prefix, parts in (("w", weights), ("b", biases)):
        if not parts:
            out.update({f"mean_{prefix}": math.nan, f"median_{prefix}": math.nan, f"var_{prefix}": math.nan})
            continue
        v = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts])
        out[f"mean_{prefix}"] = float(v.mean())
        out[f"median_{prefix}"] = float(np.sort(v)[(len(v) - 1) // 2])  # the lower median
        out[f"var_{prefix}"] = float(v.var(ddof=ddof))
    return out


def brute_groups(groups: WeightGroups, variant: str) -> list[dict[str, float]]:
    """:func:`brute_columns` for every seed of ``groups``, one seed at a time."""
    seeds = (groups.matrices or groups.convs)[0].shape[0]
    rows = []
    for i in range(seeds):
        rows.append(brute_columns(
            [m for g in groups.matrices for m in g[i].detach().double().numpy()],
            [c[i].detach().double().numpy() for c in groups.convs],
            [w[i].detach().double().numpy() for w in groups.weights],
            [b[i].detach().double().numpy() for b in groups.biases],
            variant))
    return rows


def assert_columns(got: dict, expected: list[dict], where=""):
    """``got`` (column -> (S,) values) equals the brute-force rows (NaN where they are NaN)."""
    assert list(got) == list(REFERENCE_COLUMNS)
    for col in REFERENCE_COLUMNS:
        have = np.asarray(got[col], dtype=np.float64)
        want = np.array([row[col] for row in expected])
        # singular values come from a Gram eigensolver (~1e-8·σ_max), the rest are sums
        tol = dict(rtol=1e-7, atol=1e-9) if col in ("spectral", "computational_sparsity", "mean_lambda",
                                                    "variance_lambda") else dict(rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(have, want, equal_nan=True, err_msg=f"{where} {col}", **tol)


# --------------------------------------------------------------------------- the definitions


def _hand_groups() -> WeightGroups:
    """Two seeds; matrices of four shapes (one 1×n), a conv tensor, a rank-deficient matrix, and
    in seed 1 a NaN matrix (skipped, as the reference skips it)."""
    gen = torch.Generator().manual_seed(7)
    heads = torch.randn(2, 3, 4, 6, generator=gen)  # three 4×6 "heads"
    tall = torch.randn(2, 1, 5, 3, generator=gen)
    row = torch.randn(2, 1, 1, 7, generator=gen)  # one singular value
    u = torch.randn(2, 5, 2, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, 4, generator=gen, dtype=torch.float64)
    low_rank = (u @ v).float()[:, None]  # 5×4 of rank 2: two singular values zeroed by the 1e-5 rule
    heads[1, 2, 0, 0] = float("nan")
    conv = torch.randn(2, 3, 2, 3, 3, generator=gen)
    return WeightGroups(
        matrices=[heads, tall, row, low_rank],
        convs=[conv],
        weights=[tall, row, low_rank, conv],  # the NaN matrix stays out of w_all (else var_w is NaN)
        biases=[torch.randn(2, 4, generator=gen), torch.randn(2, 1, generator=gen)],
    )


def test_known_singular_values_pool_by_hand():
    # diag(3, 4) -> {4, 3}; the row [1, 2, -2] -> {3}; [[0, 2], [1, 0], [0, 0]] -> {2, 1}.
    a = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    r = torch.tensor([[1.0, 2.0, -2.0]])
    t = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    groups = WeightGroups(matrices=[a[None, None], r[None, None], t[None, None]], weights=[a[None], r[None], t[None]],
                          biases=[torch.tensor([[1.0, 2.0, 4.0]])])
    paper, ref = reference_metrics(groups, "paper"), reference_metrics(groups)
    # pool {4, 3, 3, 2, 1}: mean 13/5, population variance (1.96 + .16 + .16 + .36 + 2.56) / 5
    assert paper["mean_lambda"].item() == pytest.approx(2.6, rel=1e-12)
    assert paper["variance_lambda"].item() == pytest.approx(1.04, rel=1e-12)
    # reference: mean of the per-matrix means (3.5, 3, 1.5), nanmean of unbiased variances (0.5, NaN, 0.5)
    assert ref["mean_lambda"].item() == pytest.approx(8 / 3, rel=1e-12)
    assert ref["variance_lambda"].item() == pytest.approx(0.5, rel=1e-12)
    # biases {1, 2, 4}: sum of squared deviations 14/3, over 3 (paper) or 2 (reference)
    assert paper["var_b"].item() == pytest.approx(14 / 9, rel=1e-12)
    assert ref["var_b"].item() == pytest.approx(14 / 6, rel=1e-12)


@pytest.mark.parametrize("variant", METRIC_VARIANTS)
def test_every_column_matches_brute_force_numpy(variant):
    groups = _hand_groups()
    assert_columns(reference_metrics(groups, variant), brute_groups(groups, variant), variant)


def test_variants_differ_only_in_the_four_columns_and_reference_is_the_default():
    groups = _hand_groups()
    ref, paper, default = reference_metrics(groups, "reference"), reference_metrics(groups, "paper"), \
        reference_metrics(groups)
    for col in REFERENCE_COLUMNS:
        assert torch.equal(default[col], ref[col]), col  # bit for bit: the default is the reference
    for col in SAME:
        assert torch.equal(paper[col], ref[col]), col
    for col in CHANGED:
        assert not torch.allclose(paper[col], ref[col]), col


def test_pool_is_per_seed_and_batching_does_not_change_it():
    groups = _hand_groups()
    batched = reference_metrics(groups, "paper")
    for i in range(2):
        alone = WeightGroups(*([t[i : i + 1] for t in part] for part in
                               (groups.matrices, groups.convs, groups.weights, groups.biases)))
        single = reference_metrics(alone, "paper")
        for col in REFERENCE_COLUMNS:
            np.testing.assert_allclose(single[col].numpy(), batched[col][i : i + 1].numpy(), rtol=1e-12, atol=0)


def test_one_singular_value_and_empty_pools():
    # Only a 1×n matrix: the reference's variance is NaN (Bessel on one value), the pooled one 0.
    row = torch.tensor([[[[1.0, 2.0, -2.0]]], [[[float("nan"), 0.0, 1.0]]]])  # seed 1: non-finite only
    groups = WeightGroups(matrices=[row], weights=[torch.ones(2, 3)])
    paper, ref = reference_metrics(groups, "paper"), reference_metrics(groups)
    assert paper["mean_lambda"][0].item() == pytest.approx(3.0) and paper["variance_lambda"][0].item() == 0.0
    assert math.isnan(ref["variance_lambda"][0].item())
    for out in (paper, ref):  # a seed with no finite matrix has no singular values at all
        assert math.isnan(out["mean_lambda"][1].item()) and math.isnan(out["variance_lambda"][1].item())
    # a non-finite weight in w_all makes the weight statistics NaN in both variants, as today
    nan_w = WeightGroups(matrices=[row], weights=[row[:, 0]])
    assert math.isnan(reference_metrics(nan_w, "paper")["var_w"][1].item())


def test_pooled_stats_and_population_variance_helpers():
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 4, generator=gen, dtype=torch.float64)
    b = torch.rand(2, 1, 2, generator=gen, dtype=torch.float64)
    ok_a, ok_b = torch.tensor([[True, False, True], [True, True, True]]), torch.ones(2, 1, dtype=torch.bool)
    got = pooled_singular_value_stats([a, b], [ok_a, ok_b])
    for i in range(2):
        pool = np.concatenate([a[i][ok_a[i]].numpy().ravel(), b[i].numpy().ravel()])
        assert got["mean"][i].item() == pytest.approx(pool.mean(), rel=1e-13)
        assert got["var"][i].item() == pytest.approx(pool.var(ddof=0), rel=1e-12)
    x = torch.rand(3, 11, generator=gen)
    for correction in (0, 1):
        np.testing.assert_allclose(distribution_stats(x, correction)["var"].numpy(),
                                   x.double().numpy().var(axis=1, ddof=correction), rtol=1e-12)
    assert torch.equal(distribution_stats(x)["var"], distribution_stats(x, 1)["var"])
    with pytest.raises(ValueError, match="unknown metric variant"):
        reference_metrics(_hand_groups(), "pooled")


# --------------------------------------------------------------------------- every task's weights

TASKS = {  # tiny configs: each builds in well under a second
    "modadd-mlp": ("modadd", ["p=7", "d_embed=4", "d_hidden=8"]),
    "modadd-transformer": ("modadd", ["model=transformer", "p=11", "d_model=16", "n_heads=2", "d_mlp=32",
                                      "batch_size=16"]),
    "parity": ("parity", ["n_bits=10", "hidden=8", "n_train=40", "n_val=20", "batch_size=16"]),
    "mnist": ("mnist", ["source=digits", "hidden=8", "n_val=50", "n_train=64", "batch_size=32",
                        "train_eval_size=32"]),
    "cifar": ("cifar", ["width=2", "n_train=32", "n_val=16", "batch_size=16", "train_eval_size=16"]),
    "mlm": ("mlm", ["vocab_size=200", "seq_len=16", "d_model=16", "n_heads=2", "d_ff=32", "n_val=16", "n_train=48",
                    "batch_size=8"]),
}


def _problem(task_name, overrides, seeds):
    task = get_task(task_name)
    cfg = resolve_config(task.config_class, task.presets, "default", parse_overrides(task.config_class, overrides))
    runs = [RunSeeds.derive(s, getattr(cfg, "split_seed", None)) for s in seeds]
    return task.build(cfg, runs, torch.device("cpu"), task.load_data(cfg))


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.cifar) if c == "cifar" else c for c in TASKS])
def test_training_loop_measures_every_tasks_weights_with_the_variant(case):
    # The trainer is where every task's weights are measured; at step 0 (epochs=0) its checkpoint
    # must hold the brute-force statistics of the task's included weights, in either variant.
    task_name, overrides = TASKS[case]
    problem = _problem(task_name, overrides, [0, 1])
    got = {}
    for variant in METRIC_VARIANTS:
        seen = []
        train(problem, start_step=0, epochs=0, log_every=1, unit=get_task(task_name).step_unit,
              on_checkpoint=seen.append, metric_variant=variant)
        assert [ck.step for ck in seen] == [0]
        got[variant] = {c: seen[0].values[c] for c in REFERENCE_COLUMNS}
        assert_columns(got[variant], brute_groups(problem.weight_groups(), variant), f"{case} {variant}")
    for col in SAME:
        np.testing.assert_array_equal(got["paper"][col], got["reference"][col], err_msg=col)


# --------------------------------------------------------------------------- latent collect

PARITY = ["--task", "parity", "--no-progress", "--threads", "1", "--set", "n_bits=10", "--set", "hidden=8",
          "--set", "n_train=40", "--set", "n_val=20", "--set", "batch_size=16", "--epochs", "3", "--log-every", "1"]


def _cli(store, seeds, *extra):
    return main(["collect", *PARITY, "--seeds", str(seeds), "--store", str(store), *extra])


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and "locks" not in p.parts}


def _step0_expected(seed, variant):
    """The step-0 row of a parity seed, from its initial weights by brute force."""
    problem = _problem("parity", ["n_bits=10", "hidden=8", "n_train=40", "n_val=20", "batch_size=16"], [seed])
    return brute_groups(problem.weight_groups(), variant)[0]


def _check_step0(study: Study, seed: int, variant: str):
    row = study.read_run(seed).iloc[0]
    assert row["step"] == 0
    expected = _step0_expected(seed, variant)
    assert_columns({c: [row[c]] for c in REFERENCE_COLUMNS}, [expected], f"seed {seed} {variant}")


def test_paper_collect_records_the_variant_and_differs_only_in_four_columns(tmp_path, capsys):
    assert _cli(tmp_path / "ref", 2) == 0
    assert _cli(tmp_path / "paper", 2, "--metric-variant", "paper") == 0
    ref, paper = Study(tmp_path / "ref" / "parity"), Study(tmp_path / "paper" / "parity")
    assert ref.read_meta()["metric_variant"] == "reference"
    assert paper.read_meta()["metric_variant"] == "paper"
    assert {k for k in ref.read_meta() if ref.read_meta()[k] != paper.read_meta()[k]} <= {
        "metric_variant", "command", "created"}
    for seed in (0, 1):
        a, b = ref.read_run(seed), paper.read_run(seed)
        assert list(a.columns) == list(b.columns) and len(a) == len(b) == 4
        for col in a.columns:
            if col in CHANGED:
                assert not np.array_equal(a[col].to_numpy(), b[col].to_numpy()), col
            else:  # training never sees the statistics: every other column is bit-identical
                np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)
        # the weight variance is rescaled by exactly (N - 1) / N: 10·8 + 8·1 weights, 8 + 1 biases
        np.testing.assert_allclose(b["var_w"], a["var_w"] * 87 / 88, rtol=1e-12)
        np.testing.assert_allclose(b["var_b"], a["var_b"] * 8 / 9, rtol=1e-12)
        _check_step0(ref, seed, "reference")
        _check_step0(paper, seed, "paper")


def test_resuming_with_the_other_variant_is_refused_unless_overwrite(tmp_path, capsys):
    store = tmp_path / "store"
    assert _cli(store, 2, "--metric-variant", "paper") == 0
    before = _snapshot(store)
    for extra, seeds in (((), 2), (("--metric-variant", "reference"), 3)):  # resume, and extend
        capsys.readouterr()
        assert _cli(store, seeds, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        assert "--metric-variant paper" in err[0] and "not reference" in err[0] and "--overwrite" in err[0]
        assert _snapshot(store) == before
    # extending with the study's own variant trains the new seed with it
    assert _cli(store, 3, "--metric-variant", "paper") == 0
    study = Study(store / "parity")
    assert study.read_meta()["seeds"] == [0, 1, 2] and study.read_meta()["metric_variant"] == "paper"
    _check_step0(study, 2, "paper")
    # --overwrite replaces the study with one of the requested variant
    capsys.readouterr()
    assert _cli(store, 1, "--overwrite") == 0
    assert study.read_meta()["metric_variant"] == "reference" and study.read_meta()["seeds"] == [0]
    _check_step0(study, 0, "reference")
    assert _cli(store, 1, "--metric-variant", "paper") == 2
    assert "--metric-variant reference, not paper" in capsys.readouterr().err


def test_study_from_before_variants_resumes_and_extends_as_reference(tmp_path, capsys):
    store = tmp_path / "store"
    assert _cli(store, 2) == 0
    study = Study(store / "parity")
    old = {k: v for k, v in study.read_meta().items() if k != "metric_variant"}
    study.write_meta(old)
    before = _snapshot(store)
    capsys.readouterr()
    assert _cli(store, 2) == 0  # finished: nothing to do, nothing rewritten, no warning
    out, err = capsys.readouterr()
    assert "nothing to do" in out and err == ""
    assert _snapshot(store) == before and "metric_variant" not in study.read_meta()
    assert _cli(store, 2, "--metric-variant", "paper") == 2  # the absent key reads as reference
    assert "--metric-variant reference, not paper" in capsys.readouterr().err
    assert _cli(store, 3) == 0  # extending it writes study.json anyway, now with the key
    out, err = capsys.readouterr()
    assert err == ""
    meta = study.read_meta()
    assert meta["seeds"] == [0, 1, 2] and meta["metric_variant"] == "reference"
    assert {k: v for k, v in meta.items() if k not in ("seeds", "commands", "metric_variant")} == \
        {k: v for k, v in old.items() if k not in ("seeds", "commands")}
    after = _snapshot(store)
    for name in ("runs/seed-000.parquet", "runs/seed-001.parquet"):
        assert after[f"parity/{name}"] == before[f"parity/{name}"]
    _check_step0(study, 2, "reference")


def test_cli_choices_match_the_metrics_module_and_bad_values_are_one_line(tmp_path, capsys):
    from latent.cli import collect as collect_cmd

    assert collect_cmd.METRIC_VARIANTS == METRIC_VARIANTS
    parser = build_parser()
    args = parser.parse_args(["collect", "--task", "parity"])
    assert args.metric_variant == "reference"
    with pytest.raises(SystemExit) as info:
        main(["collect", "--task", "parity", "--metric-variant", "pooled", "--store", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--metric-variant" in err[0]
    from latent.collect.study import collect_study
    from latent.errors import UserError

    with pytest.raises(UserError, match="--metric-variant must be one of reference, paper"):
        collect_study("parity", 1, store=tmp_path, metric_variant="pooled", progress=False)
    assert not (tmp_path / "parity").exists()
    # a study.json naming a variant this latent does not know is one clear line too
    assert _cli(tmp_path, 1) == 0
    study = Study(tmp_path / "parity")
    study.write_meta({**study.read_meta(), "metric_variant": "odd"})
    capsys.readouterr()
    assert _cli(tmp_path, 1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'metric_variant' must be 'reference' or 'paper' (got 'odd')" in err[0]
    json.loads(study.study_file.read_text())  # untouched and readable
