"""latent.collect.checkpoints: saved models in, one brute-force-checked table per run out; bad input is one line."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from latent.collect.checkpoints import checkpoint_runs, find_runs
from latent.collect.modules import module_metrics
from latent.errors import UserError
from latent.store import REFERENCE_COLUMNS
from test_modules import assert_columns, brute_force


def _state(seed: int, width: int = 6) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2)).state_dict()


def _expected(sd) -> dict:
    return brute_force([sd["0.weight"], sd["2.weight"]], biases=[sd["0.bias"], sd["2.bias"]])


def _save(sd, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)


def _row(frame, step):
    row = frame.set_index("step").loc[step]
    return {c: row[c] for c in REFERENCE_COLUMNS}


def test_files_of_every_format_give_one_brute_force_checked_table_per_run(tmp_path):
    files = {"run-b": {"ckpt_0.safetensors": 0, "ckpt_10.pt": 1}, "run-a": {"model-step20.pth": 2, "model-step30.bin": 3,
                                                                             "final-40.ckpt": 4}}
    for run, names in files.items():
        for name, seed in names.items():
            _save(_state(seed), tmp_path / run / name)
    tables = checkpoint_runs(tmp_path, progress=False)
    assert list(tables) == ["run-a", "run-b"]  # a root's runs, sorted by name
    assert tables["run-a"]["step"].tolist() == [20, 30, 40] and tables["run-b"]["step"].tolist() == [0, 10]
    assert list(tables["run-a"].columns) == ["step", *REFERENCE_COLUMNS]
    for run, names in files.items():
        for name, seed in names.items():
            step = int(re.findall(r"\d+", name)[-1])
            assert_columns(_row(tables[run], step), _expected(_state(seed)))
    # runs named one by one, and computed by two processes: the same tables
    again = checkpoint_runs([tmp_path / "run-a", tmp_path / "run-b"], workers=2, progress=False)
    assert list(again) == ["run-a", "run-b"]
    for run in tables:
        assert again[run].equals(tables[run])


def _hf_run(root: Path, *, sharded: bool = False, bin_format: bool = False) -> dict[int, dict]:
    """A Hugging Face output directory: checkpoint-N/ folders, a final model and pickled extras."""
    states = {3: _state(10), 6: _state(11)}
    history = [{"loss": 0.9, "grad_norm": 1.5, "learning_rate": 1e-3, "epoch": 0.5, "step": 3},
               {"eval_loss": 0.8, "eval_accuracy": 0.6, "eval_runtime": 0.1, "eval_samples_per_second": 99.0,
                "epoch": 0.5, "step": 3},
               {"loss": 0.7, "epoch": 0.75, "step": 5},
               {"eval_loss": 0.5, "eval_accuracy": 0.9, "epoch": 1.0, "step": 6}]
    for step, sd in states.items():
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if sharded:
            names = sorted(sd)
            shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
            for shard, keys in shards.items():
                save_file({k: sd[k].contiguous() for k in keys}, str(folder / shard))
            (folder / "model.safetensors.index.json").write_text(json.dumps(
                {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
        elif bin_format:
            torch.save(sd, folder / "pytorch_model.bin")
        else:
            _save(sd, folder / "model.safetensors")
        log = [e for e in history if e["step"] <= step]
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": log}))
        _evil(folder / "optimizer.pt")
        _evil(folder / "rng_state.pth")
    _save(_state(12), root / "model.safetensors")  # the final model: no step, not read
    _evil(root / "training_args.bin")
    return states


class _Pwn:
    """Unpickling this creates a marker file: a loader that unpickles would be caught."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(path: Path) -> None:
    _Pwn.marker = str(path.parent.parent / "PWNED")
    path.write_bytes(pickle.dumps(_Pwn()))


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_hugging_face_checkpoint_folders_with_trainer_state_scalars(tmp_path, layout):
    run = tmp_path / "bert-seed1"
    states = _hf_run(run, sharded=layout == "sharded", bin_format=layout == "bin")
    tables = checkpoint_runs([run], progress=False)
    table = tables["bert-seed1"]
    assert table["step"].tolist() == [3, 6]
    for step, sd in states.items():
        assert_columns(_row(table, step), _expected(sd))
    assert table["eval_loss"].tolist() == [0.8, 0.5]
    assert table["eval_accuracy"].tolist() == [0.6, 0.9]
    assert table.loc[0, "loss"] == 0.9 and table.loc[0, "grad_norm"] == 1.5
    assert not any(c.endswith(("_runtime", "_per_second")) for c in table.columns)
    assert not (tmp_path / "PWNED").exists() and not (run / "PWNED").exists()


def test_a_root_of_hugging_face_runs(tmp_path):
    _hf_run(tmp_path / "seed-0")
    _hf_run(tmp_path / "seed-1")
    assert list(find_runs(tmp_path)) == ["seed-0", "seed-1"]
    assert list(find_runs([tmp_path / "seed-1"])) == ["seed-1"]


def test_wrapped_state_dicts_are_unwrapped(tmp_path):
    (tmp_path / "r").mkdir()
    torch.save({"state_dict": _state(0), "epoch": 3, "global_step": 30}, tmp_path / "r" / "a-1.ckpt")
    torch.save({"model": _state(1), "optimizer": {"lr": 0.1}}, tmp_path / "r" / "b-2.pt")
    table = checkpoint_runs([tmp_path / "r"], progress=False)["r"]
    assert_columns(_row(table, 1), _expected(_state(0)))
    assert_columns(_row(table, 2), _expected(_state(1)))


def test_step_pattern_picks_the_step(tmp_path):
    for epoch, seed in ((3, 0), (12, 1)):
        _save(_state(seed), tmp_path / "run" / f"epoch{epoch}-step{epoch * 100 + 7}.pt")
    default = checkpoint_runs([tmp_path / "run"], progress=False)["run"]
    assert default["step"].tolist() == [307, 1207]
    by_epoch = checkpoint_runs([tmp_path / "run"], step_pattern=r"epoch(\d+)", progress=False)["run"]
    assert by_epoch["step"].tolist() == [3, 12]
    assert_columns(_row(by_epoch, 12), _expected(_state(1)))


def test_include_exclude_and_heads_reach_the_state_dict_rules(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.TransformerEncoderLayer(8, 2, 16))
    _save(model.state_dict(), tmp_path / "run" / "step-1.safetensors")
    table = checkpoint_runs([tmp_path / "run"], heads=2, progress=False)["run"]
    assert _row(table, 1) == module_metrics(model)
    table = checkpoint_runs([tmp_path / "run"], heads=2, exclude="0.*", progress=False)["run"]
    assert _row(table, 1) == module_metrics(model, exclude="0.*")


def test_nothing_is_written(tmp_path):
    _save(_state(0), tmp_path / "run" / "s-1.pt")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    checkpoint_runs([tmp_path / "run"], workers=2, progress=False)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def _one_line_error(paths, match, **kwargs):
    with pytest.raises(UserError) as info:
        checkpoint_runs(paths, progress=False, **kwargs)
    text = str(info.value)
    assert "\n" not in text and re.search(match, text), text
    return text


def test_duplicate_steps_name_both_files(tmp_path):
    _save(_state(0), tmp_path / "run" / "ckpt-5.pt")
    _save(_state(1), tmp_path / "run" / "model_5.safetensors")
    _one_line_error([tmp_path / "run"], r"ckpt-5\.pt and .*model_5\.safetensors both have step 5")


def test_no_checkpoints(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    _one_line_error([tmp_path / "empty"], r"no checkpoints found in .*empty")
    _one_line_error([tmp_path / "missing"], r"missing is not a directory")


def test_corrupt_files_name_the_file(tmp_path):
    _save(_state(0), tmp_path / "a" / "s-1.safetensors")
    raw = (tmp_path / "a" / "s-1.safetensors").read_bytes()
    (tmp_path / "a" / "s-1.safetensors").write_bytes(raw[: len(raw) // 2])
    _one_line_error([tmp_path / "a"], r"cannot read .*a/s-1\.safetensors")
    _save(_state(0), tmp_path / "b" / "s-1.pt")
    raw = (tmp_path / "b" / "s-1.pt").read_bytes()
    (tmp_path / "b" / "s-1.pt").write_bytes(raw[: len(raw) // 2])
    _one_line_error([tmp_path / "b"], r"cannot read .*b/s-1\.pt: .*corrupt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickles_are_never_loaded(tmp_path):
    (tmp_path / "run").mkdir()
    _evil(tmp_path / "run" / "step-1.pt")
    _one_line_error([tmp_path / "run"], r"step-1\.pt: it holds Python objects that weights_only loading refuses")
    assert not (tmp_path / "PWNED").exists()


def test_content_that_is_not_a_state_dict(tmp_path):
    (tmp_path / "a").mkdir()
    torch.save({"lr": 0.1, "name": "adam"}, tmp_path / "a" / "s-1.pt")
    _one_line_error([tmp_path / "a"], r"a/s-1\.pt holds a dict \(lr, name\) that is not a state dict")
    (tmp_path / "b").mkdir()
    torch.save([torch.zeros(2)], tmp_path / "b" / "s-1.pt")
    _one_line_error([tmp_path / "b"], r"b/s-1\.pt holds a list, not a state dict")
    (tmp_path / "c").mkdir()
    torch.save({"w": torch.zeros(2, 2), "n": 3}, tmp_path / "c" / "s-1.pt")
    _one_line_error([tmp_path / "c"], r"c/s-1\.pt is not a plain state dict of tensors: entry 'n' is of type int")


def test_runs_of_different_models_are_refused(tmp_path):
    _save(_state(0), tmp_path / "a" / "s-1.pt")
    _save(_state(1), tmp_path / "b" / "s-1.pt")
    renamed = {k.replace("2.", "out."): v for k, v in _state(2).items()}
    _save(renamed, tmp_path / "b" / "s-2.pt")
    _one_line_error(tmp_path, r"b/s-2\.pt lacks the tensor 2\.weight that .*a/s-1\.pt has \(3 more differences\)")
    _save(_state(3, width=5), tmp_path / "b" / "s-2.pt")
    _one_line_error(tmp_path, r"b/s-2\.pt: 0\.weight has shape \(5, 4\) but \(6, 4\)")


def test_names_without_a_step_and_bad_step_patterns(tmp_path):
    _save(_state(0), tmp_path / "run" / "best.pt")
    _one_line_error([tmp_path / "run"], r"cannot tell the step of .*best\.pt: its name has no number")
    os.rename(tmp_path / "run" / "best.pt", tmp_path / "run" / "best-3.pt")
    _one_line_error([tmp_path / "run"], r"must have exactly one group", step_pattern=r"\d+")
    _one_line_error([tmp_path / "run"], r"not a valid regular expression", step_pattern=r"(")
    _one_line_error([tmp_path / "run"], r"best-3\.pt: its name does not match step_pattern", step_pattern=r"epoch(\d+)")
    _one_line_error([tmp_path / "run"], r"workers must be", workers=0)


def test_a_corrupt_trainer_state_or_a_missing_shard_names_the_file(tmp_path):
    _hf_run(tmp_path / "hf")
    (tmp_path / "hf" / "checkpoint-3" / "trainer_state.json").write_text("{not json")
    _one_line_error([tmp_path / "hf"], r"cannot read .*checkpoint-3/trainer_state\.json")
    (tmp_path / "hf" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (tmp_path / "hf" / "checkpoint-6" / "model.safetensors").unlink()
    (tmp_path / "hf" / "checkpoint-6" / "model.safetensors.index.json").write_text('{"weight_map": {"a": "gone.safetensors"}}')
    _one_line_error([tmp_path / "hf"], r"gone\.safetensors is missing \(named in the shard index of .*checkpoint-6\)")
