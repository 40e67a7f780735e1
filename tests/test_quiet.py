"""`-q`/`--quiet` means one thing on every command that writes: stdout is the path of what it wrote
and nothing else, and stderr holds no progress bar, summary or hint (only warnings and errors)."""

from __future__ import annotations

from pathlib import Path

from latent.cli import main
from latent.simulate import SimConfig, simulate

FIT = ["--max-states", "3", "--restarts", "1", "--n-iter", "10", "--n-boot", "20", "--resamples", "0",
       "--min-runs", "3", "--jobs", "1", "--folds", "3", "--no-audit"]


def only_path(capsys) -> Path:
    """stdout is one line, an existing path; stderr has no bar, summary or hint."""
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert len(lines) == 1, cap.out
    path = Path(lines[0])
    assert path.exists(), path
    for word in ("next:", "%|", "wrote", "rendered", "trained", "reusing", "fitting"):
        assert word not in cap.err, (word, cap.err)
    return path


def test_quiet_prints_only_the_path_on_every_command_that_writes(tmp_path, capsys):
    store = str(tmp_path)
    assert main(["simulate", "--store", store, "--study", "a", "--runs", "8", "--checkpoints", "30", "-q"]) == 0
    assert only_path(capsys) == tmp_path / "a"
    assert main(["simulate", "--store", store, "--study", "b", "--runs", "6", "--checkpoints", "30", "--seed", "5",
                 "--quiet"]) == 0
    only_path(capsys)
    assert main(["fit", "--store", store, "--study", "a", *FIT, "-q"]) == 0
    assert only_path(capsys).parent == tmp_path / "a" / "fits"
    assert main(["report", "--store", store, "--study", "a", "-q"]) == 0
    assert only_path(capsys).name == "index.html"
    # different sizes: the subsample refits run, silently
    assert main(["compare", "--store", store, "a", "b", *FIT, "--subsamples", "2", "-q"]) == 0
    cap = capsys.readouterr()
    (line,) = cap.out.splitlines()
    assert line.endswith("index.html") and Path(line).is_file()
    assert "latent compare: note: The studies have different numbers of runs" in cap.err  # notes are warnings here
    assert "refitting" not in cap.err + cap.out and "at equal size" not in cap.out
    # import and collect
    table = simulate(SimConfig(n_runs=3, n_checkpoints=20, seed=1))[0]
    csv = tmp_path / "runs.csv"
    table.to_csv(csv, index=False)
    assert main(["import", "table", str(csv), "--store", store, "--study", "imp", "--convergence", "val_acc>0.9",
                 "-q"]) == 0
    assert only_path(capsys) == tmp_path / "imp"
    assert main(["collect", "--task", "parity", "--seeds", "1", "--epochs", "2", "--log-every", "1", "--threads", "1",
                 "--store", store, "--set", "n_bits=10", "--set", "hidden=8", "--set", "n_train=40", "--set", "n_val=20",
                 "--set", "batch_size=16", "-q"]) == 0
    assert only_path(capsys) == tmp_path / "parity"


def test_commands_take_their_stderr_log_handlers_away(tmp_path, capsys):
    """A command's log handler lives as long as the command: a second command in the same process (a
    test, a notebook calling latent.cli.main) never prints its warnings under the first one's name too."""
    import logging

    from latent.cli import main
    from latent.cli.shared import StderrHandler

    def stderr_handlers():
        return [h for name in ("latent", "latent.collect") for h in logging.getLogger(name).handlers
                if isinstance(h, StderrHandler)]

    assert stderr_handlers() == []
    assert main(["fit", "--store", str(tmp_path), "--study", "nosuch"]) == 2
    assert main(["collect", "--task", "modadd", "--seeds", "2", "--epochs", "10", "--log-every", "5",
                 "--store", str(tmp_path), "--study", "tiny", "-q"]) == 0
    assert main(["fit", "--store", str(tmp_path), "--study", "tiny", "--max-states", "2", "-q"]) in (0, 2)
    assert stderr_handlers() == []
    capsys.readouterr()
