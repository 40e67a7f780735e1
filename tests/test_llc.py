"""The llc metric group (latent.collect.llc): the SGLD estimate against its exact expectation on a
quadratic loss, batched equals alone, training untouched, the thinned grid, and the CLI."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("devinterp")

from latent.collect.llc import LLCConfig, LLCSampler, parse_llc  # noqa: E402
from latent.collect.seeds import RunSeeds  # noqa: E402
from latent.collect.tasks import get_task  # noqa: E402
from latent.collect.config import resolve_config  # noqa: E402
from latent.cli import main  # noqa: E402
from latent.errors import UserError  # noqa: E402
from latent.store import Study  # noqa: E402

MODADD = ["--task", "modadd", "--set", "p=17", "--set", "d_embed=8", "--set", "d_hidden=16", "--set", "epochs=12",
          "--set", "log_every=2", "--no-progress"]
SMALL = ["--llc", "chains=2", "--llc", "draws=5", "--llc", "burnin=2"]


class Quadratic:
    """A stand-in problem whose loss per row is ½ Σ_j h_j w_j² (the same for every row)."""

    def __init__(self, h: np.ndarray, n_seeds: int, n_rows: int):
        self.h = torch.as_tensor(h, dtype=torch.float64)
        self.params = {"w": torch.zeros(n_seeds, len(h), dtype=torch.float64)}
        self.train_idx = torch.arange(n_rows).repeat(n_seeds, 1)

    @property
    def n_seeds(self):
        return self.params["w"].shape[0]

    def loss_at(self, params, rows):
        return rows.shape[1] * 0.5 * (params["w"] ** 2 * self.h).sum(-1)


def expected_llc(h, nbeta, lr, localization, burnin, draws):
    """E[λ̂] for SGLD started at the minimum w* = 0 of ½ Σ h_j w_j², by hand: each coordinate is an
    AR(1) chain w ← r w + √ε ξ with r = 1 − ε a / 2 and a = nβ h + γ, so after t steps its variance
    is ε (1 − r^{2t}) / (1 − r²); the loss is averaged over steps burnin .. burnin + draws − 1."""
    a = nbeta * h + localization
    r = 1 - lr * a / 2
    t = np.arange(burnin, burnin + draws)[:, None]
    var = lr * (1 - r ** (2 * t)) / (1 - r**2)
    return nbeta * (0.5 * (h * var).sum(-1)).mean()


def test_the_estimate_matches_its_exact_expectation_on_a_quadratic_loss():
    # 6 directions: three stiff (their contribution tends to 1/2 each), three flat (near 0),
    # which is what makes the LLC count "effective parameters".
    h = np.array([50.0, 20.0, 8.0, 1e-3, 1e-4, 0.0])
    cfg = LLCConfig(every=1, chains=4, draws=100, burnin=100, lr=1e-4, localization=10.0, nbeta=100.0)
    problem = Quadratic(h, n_seeds=64, n_rows=10)
    out = LLCSampler(cfg, range(64)).estimate(problem, step=0)
    want = expected_llc(h, cfg.nbeta, cfg.lr, cfg.localization, cfg.burnin, cfg.draws)
    # the 64 seeds are independent draws of the estimator: their mean within 4 standard errors
    est = out["llc"].numpy()
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - want) < 4 * se, (est.mean(), want, se)
    # the stiff three near 1/2 each (a little above: SGLD's step inflates the variance), the flat near 0
    assert 1.45 < want < 1.7
    assert np.all(np.isfinite(out["llc_std"].numpy())) and np.all(out["llc_std"].numpy() > 0)
    assert torch.equal(problem.params["w"], torch.zeros(64, 6, dtype=torch.float64))  # w* untouched


def test_default_nbeta_is_n_over_log_n_whatever_the_batch():
    h = np.array([30.0, 30.0])
    n = 50  # training rows; batches of 10 (every row has the same loss here, so only nβ can differ)
    cfg = LLCConfig(every=1, chains=8, draws=80, burnin=80, lr=1e-3, localization=1.0, batch_size=10)
    est = LLCSampler(cfg, range(48)).estimate(Quadratic(h, 48, n), step=3)["llc"].numpy()
    want = expected_llc(h, n / np.log(n), cfg.lr, cfg.localization, cfg.burnin, cfg.draws)
    assert abs(est.mean() - want) < 4 * est.std(ddof=1) / np.sqrt(len(est))


def _modadd_problem(seeds, epochs=150):
    task = get_task("modadd")
    cfg = resolve_config(task.config_class, task.presets, "default", {"p": 23, "d_embed": 8, "d_hidden": 32})
    problem = task.build(cfg, [RunSeeds.derive(s) for s in seeds], torch.device("cpu"))
    for _ in range(epochs):
        problem.train_step()
    return problem


def test_a_seed_alone_gets_the_estimate_it_gets_among_others():
    cfg = LLCConfig(chains=2, draws=20, burnin=5)
    batch = LLCSampler(cfg, [3, 5, 8]).estimate(_modadd_problem([3, 5, 8]), step=150)
    alone = LLCSampler(cfg, [5]).estimate(_modadd_problem([5]), step=150)
    for col in ("llc", "llc_std"):
        np.testing.assert_allclose(batch[col][1].item(), alone[col][0].item(), rtol=1e-3)
    other_step = LLCSampler(cfg, [5]).estimate(_modadd_problem([5]), step=160)
    assert other_step["llc"][0].item() != alone["llc"][0].item()  # the step seeds the noise


def test_estimating_leaves_training_exactly_as_it_was():
    problem = _modadd_problem([0, 1], epochs=40)
    before = {k: v.detach().clone() for k, v in problem.params.items()}
    states = [problem.seed_state(i) for i in range(2)]
    LLCSampler(LLCConfig(chains=1, draws=5, burnin=0), [0, 1]).estimate(problem, step=40)
    for k, v in problem.params.items():
        assert torch.equal(v, before[k])
    for old, new in zip(states, [problem.seed_state(i) for i in range(2)]):
        assert old.keys() == new.keys() and all(np.array_equal(old[k], new[k]) for k in old)


def test_collecting_llc_changes_no_other_column_and_measures_on_its_grid(tmp_path):
    assert main(["collect", *MODADD, "--seeds", "2", "--store", str(tmp_path / "a"), "--metric-groups", "function"]) == 0
    assert main(["collect", *MODADD, "--seeds", "2", "--store", str(tmp_path / "b"), "--metric-groups",
                 "function,llc", "--llc", "every=2", *SMALL]) == 0
    meta = Study(tmp_path / "b" / "modadd").read_meta()
    assert meta["metric_groups"] == ["function", "llc"] and meta["groups"]["llc"] == ["llc"]
    assert meta["llc"] == {**LLCConfig().as_dict(), "every": 2, "chains": 2, "draws": 5, "burnin": 2}
    for seed in (0, 1):
        a = Study(tmp_path / "a" / "modadd").read_run(seed)
        b = Study(tmp_path / "b" / "modadd").read_run(seed)
        pd.testing.assert_frame_equal(a, b[a.columns])
        measured = b["llc"].notna().to_numpy()
        assert measured.tolist() == [i % 2 == 0 for i in range(len(b))]  # checkpoints 0, 2, 4, ... (steps 0, 4, 8, 12)
        assert np.isfinite(b.loc[measured, "llc_std"]).all()


def test_fit_on_llc_uses_the_measured_checkpoints(tmp_path, capsys):
    assert main(["collect", *MODADD, "--set", "epochs=40", "--seeds", "3", "--store", str(tmp_path),
                 "--metric-groups", "llc", "--llc", "every=2", *SMALL]) == 0
    capsys.readouterr()
    assert main(["fit", "--store", str(tmp_path), "--study", "modadd", "--features", "llc,val_loss",
                 "--max-states", "2", "--restarts", "1", "--threshold", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "the fit uses those, a median 11 per run" in out  # 21 checkpoints, every 2nd: 0, 2, ..., 20
    fit_dir = sorted((tmp_path / "modadd" / "fits").iterdir())[-1]
    paths = pd.read_parquet(fit_dir / "paths.parquet")
    assert sorted(paths["step"].unique().tolist()) == list(range(0, 41, 4))


def test_all_and_the_default_leave_llc_out(tmp_path):
    assert main(["collect", *MODADD, "--seeds", "1", "--store", str(tmp_path / "a"), "--metric-groups", "all"]) == 0
    assert main(["collect", *MODADD, "--seeds", "1", "--store", str(tmp_path / "b")]) == 0
    for store in ("a", "b"):
        assert "llc" not in Study(tmp_path / store / "modadd").read_meta()["metric_groups"]


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and "locks" not in p.parts}


def test_resuming_with_other_llc_settings_is_refused_and_the_study_is_untouched(tmp_path, capsys):
    args = ["collect", *MODADD, "--store", str(tmp_path), "--metric-groups", "llc", *SMALL]
    assert main([*args, "--seeds", "1"]) == 0
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main([*args, "--seeds", "2", "--llc", "lr=2e-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records other llc settings" in err[0] and "--llc lr=0.001" in err[0]
    assert _snapshot(tmp_path) == before
    # leaving --llc out resumes and extends with the study's own settings
    assert main(["collect", *MODADD, "--store", str(tmp_path), "--metric-groups", "llc", "--seeds", "2"]) == 0
    assert json.loads((tmp_path / "modadd" / "study.json").read_text())["llc"]["draws"] == 5


@pytest.mark.parametrize("bad, words", [
    (["--llc", "draws=0"], "draws must be at least 1"),
    (["--llc", "lr=nan"], "lr must be a finite number > 0"),
    (["--llc", "chain=2"], "KEY one of every, chains"),
    (["--llc", "every=two"], "every must be an integer"),
])
def test_bad_llc_settings_get_one_line(tmp_path, capsys, bad, words):
    assert main(["collect", *MODADD, "--seeds", "1", "--store", str(tmp_path), "--metric-groups", "llc", *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "modadd").exists()


def test_without_devinterp_the_group_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "devinterp", None)  # import devinterp now raises ImportError
    assert main(["collect", *MODADD, "--seeds", "1", "--store", str(tmp_path), "--metric-groups", "llc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[devinterp]'" in err[0]
    with pytest.raises(UserError):
        parse_llc(["burnin=-1"])


def test_a_study_json_with_damaged_llc_settings_is_refused_in_one_line(tmp_path, capsys):
    args = ["collect", *MODADD, "--store", str(tmp_path), "--metric-groups", "llc", *SMALL]
    assert main([*args, "--seeds", "1"]) == 0
    path = tmp_path / "modadd" / "study.json"
    for damaged in ({"draws": "many"}, {"bogus": 1}, None):
        meta = json.loads(path.read_text())
        meta["llc"] = damaged if damaged is None else {**meta["llc"], **damaged}
        path.write_text(json.dumps(meta))
        capsys.readouterr()
        assert main([*args[:-6], "--seeds", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "records the llc group without valid settings" in err[0], err
        assert not (tmp_path / "modadd" / "runs" / "seed-001.parquet").exists()
