"""Config fields as the single source of their CLI (latent.settings): the options, the validation, the
recorded command and the fit-id tokens all come from FitConfig's declarations, and round-trip."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from latent.cli import build_parser, main
from latent.fit import FitConfig, _default_command, fit_options
from latent.settings import ConfigError, settings_of, validate_fields


def _parse(argv):
    from latent.cli.fit import config_from_args

    return config_from_args(build_parser().parse_args(["fit", *argv]))


def test_every_field_is_declared_and_every_flag_is_an_option():
    declared = settings_of(FitConfig)
    assert [f.name for f, _ in declared] == [f.name for f in dataclasses.fields(FitConfig)]
    text = build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    for f, m in declared:
        assert m["flag"] and m["flag"] in text, f.name
    # the compare command takes the same flags (it picks its fits with them)
    compare = build_parser()._subparsers._group_actions[0].choices["compare"].format_help()
    assert all(m["flag"] in compare for _, m in declared)


def test_the_recorded_command_parses_back_to_the_same_config():
    cfgs = [FitConfig(metric="val_acc", threshold=0.9, direction="above", features=("l1", "l2")),
            FitConfig(metric="loss", threshold=0.5, direction="below", max_states=4, one_se=False, audit=False,
                      allow_partial=True, scaling="per_run", test_fraction=0.3, alpha=0.01, family="ar")]

    class Root:
        root = "data/x"

    for cfg in cfgs:
        command = _default_command(Root(), cfg)
        argv = shlex.split(command)[2:]
        assert argv[:2] == ["--study", "data/x"]
        assert _parse(argv[2:]) == cfg, command


def test_library_errors_name_the_field_and_the_cli_its_flag(tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        validate_fields(FitConfig(max_states=0))
    assert str(err.value) == "max_states must be an integer of at least 1, got 0"
    assert err.value.for_cli() == "--max-states must be an integer of at least 1, got 0"
    for cfg, words in ((FitConfig(folds=1), "folds must be an integer of at least 2"),
                       (FitConfig(scaling="x"), "unknown scaling 'x'; choose one of"),
                       (FitConfig(alpha=1.0), "alpha must be between 0 and 1, got 1.0"),
                       (FitConfig(test_fraction=float("nan")), "test_fraction must be between 0 and 1"),
                       (FitConfig(resamples=True), "resamples must be an integer")):
        with pytest.raises(ConfigError, match=words):
            validate_fields(cfg)
    validate_fields(FitConfig())  # the defaults are valid
    from latent.simulate import SimConfig, simulate, write_study

    write_study(tmp_path / "s", *simulate(SimConfig(n_runs=4, n_checkpoints=12, seed=0)))
    assert main(["fit", "--store", str(tmp_path), "--study", "s", "--n-iter", "0"]) == 2
    assert capsys.readouterr().err.strip() == "latent fit: error: --n-iter must be an integer of at least 1, got 0"
    # the HMM selector, a library class, names its parameters
    from latent.errors import UserError
    from latent.hmm import HMMSelector

    with pytest.raises(UserError, match="^max_states must be"):
        HMMSelector(max_states=0).fit(*_tiny())


def _tiny():
    import numpy as np

    return np.zeros((12, 2)), np.array([6, 6])


def test_fit_id_tokens_come_from_the_declarations():
    meta = {"convergence": {"metric": "val_acc", "threshold": 0.9}}
    cfg = FitConfig(max_states=6, n_boot=10, one_se=False).resolve(meta)
    assert fit_options(cfg) == ["max6", "bestk", "boot10"]  # field order, declared tokens
