"""The Hugging Face and Lightning callbacks, end to end on tiny models built from configs (no downloads).

CI installs the extras (``.[hf,lightning]``): these tests import transformers and lightning
directly, so a missing extra fails them rather than skipping them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latent.collect.checkpoints import checkpoint_runs
from latent.errors import UserError
from latent.store import REFERENCE_COLUMNS, Study
from test_modules import assert_columns, brute_force

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")  # lightning's own deprecation notice

# --------------------------------------------------------------------------- Hugging Face


def _bert_brute_force(model) -> dict:
    """Reference B4 for BERT (q, k, v, attention output, intermediate, output per layer) plus
    the pooler and the classifier, which a classification model adds."""
    linears = []
    for layer in model.bert.encoder.layer:
        att = layer.attention
        linears += [att.self.query, att.self.key, att.self.value, att.output.dense, layer.intermediate.dense,
                    layer.output.dense]
    linears += [model.bert.pooler.dense, model.classifier]
    return brute_force([lin.weight for lin in linears], biases=[lin.bias for lin in linears])


def _hf_trainer(out, seed: int, callback, max_steps: int = 6, every_eval: int = 3, save: bool = True):
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (64, 12), generator=gen)
    labels = (ids[:, 0] > 25).long()
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": labels[i]}
            for i in range(64)]
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
        eval_strategy="steps", eval_steps=every_eval, logging_steps=every_eval,
        save_strategy="steps" if save else "no", save_steps=every_eval, report_to=[], use_cpu=True, seed=seed,
        disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:16], callbacks=[callback])


def test_hf_callback_logs_at_each_save_with_the_trainers_eval_metrics(tmp_path):
    from latent.collect.integrations.hf import LatentCallback

    cb = LatentCallback(tmp_path / "data", study="bert", convergence="eval_loss<0.5")
    trainer = _hf_trainer(tmp_path / "out", seed=5, callback=cb)
    initial = _bert_brute_force(trainer.model)
    trainer.train()
    study = Study(tmp_path / "data" / "bert")
    table = study.read_run(5)  # the seed is args.seed
    assert table["step"].tolist() == [0, 3, 6]
    assert_columns({c: table.loc[0, c] for c in REFERENCE_COLUMNS}, initial)
    assert_columns({c: table.loc[2, c] for c in REFERENCE_COLUMNS}, _bert_brute_force(trainer.model))
    # the rows at the saves are the statistics of the checkpoints the Trainer wrote, bit for bit
    saved = checkpoint_runs([tmp_path / "out"], progress=False)["out"].set_index("step")
    for i, step in ((1, 3), (2, 6)):
        assert {c: table.loc[i, c] for c in REFERENCE_COLUMNS} == {c: saved.loc[step, c] for c in REFERENCE_COLUMNS}
    history = trainer.state.log_history
    evals = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    losses = {e["step"]: e["loss"] for e in history if "loss" in e}
    assert table["eval_loss"].tolist()[1:] == [evals[3], evals[6]] and math.isnan(table.loc[0, "eval_loss"])
    assert table["loss"].tolist()[1:] == [losses[3], losses[6]]
    assert saved.loc[6, "eval_loss"] == evals[6]  # the import reads the same values back
    assert not any(c.endswith(("_runtime", "_per_second")) for c in table.columns)
    meta = study.read_meta()
    assert meta["seeds"] == [5] and meta["convergence"] == {"metric": "eval_loss", "threshold": 0.5,
                                                            "direction": "below"}
    assert study.run_status(5).status == "done"


def test_hf_callback_every_n_steps_and_resume_from_checkpoint(tmp_path):
    from latent.collect.integrations.hf import LatentCallback

    cb = LatentCallback(tmp_path / "data", study="bert", seed=9, every=2)
    trainer = _hf_trainer(tmp_path / "out", seed=1, callback=cb, max_steps=4, every_eval=2)
    trainer.train()
    study = Study(tmp_path / "data" / "bert")
    first = study.read_run(9)
    assert first["step"].tolist() == [0, 2, 4]
    evals = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    assert first["eval_loss"].tolist()[1:] == [evals[2], evals[4]]
    # train on from checkpoint-2 to step 6: the run resumes, its rows before step 2 are kept
    cb = LatentCallback(tmp_path / "data", study="bert", seed=9, every=2)
    more = _hf_trainer(tmp_path / "out", seed=1, callback=cb, max_steps=6, every_eval=2)
    more.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    table = study.read_run(9)
    assert table["step"].tolist() == [0, 2, 4, 6]
    assert table.loc[0, "l2"] == first.loc[0, "l2"] and table.loc[1, "l2"] == first.loc[1, "l2"]


# --------------------------------------------------------------------------- Lightning


def _lightning_module(fail_at: int | None = None):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            self.train_losses, self.val_losses = {}, {}

        def training_step(self, batch, batch_idx):
            if fail_at is not None and self.global_step == fail_at:
                raise RuntimeError("diverged")
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            self.train_losses[self.global_step] = float(loss.detach())
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("val_loss", loss)
            if not self.trainer.sanity_checking:
                self.val_losses[self.global_step] = float(loss)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    return Tiny()


def _fit(module, callback, epochs: int = 3, **trainer_args):
    import lightning as L

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    train = torch.utils.data.DataLoader(data, batch_size=16)
    val = torch.utils.data.DataLoader(data, batch_size=64)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[callback], **trainer_args)
    trainer.fit(module, train, val)
    return trainer


def test_lightning_callback_logs_each_epoch_with_that_steps_metrics(tmp_path, monkeypatch):
    import lightning as L

    from latent.collect.integrations.lightning import LatentCallback

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    L.seed_everything(7)  # the run's seed, which the callback picks up
    module = _lightning_module()
    net = module.net
    initial = brute_force([net[0].weight, net[2].weight], biases=[net[0].bias, net[2].bias])
    _fit(module, LatentCallback(tmp_path, study="tiny", convergence="val_loss<0.3"))
    table = Study(tmp_path / "tiny").read_run(7)
    assert table["step"].tolist() == [0, 4, 8, 12]  # 4 batches an epoch
    assert_columns({c: table.loc[0, c] for c in REFERENCE_COLUMNS}, initial)
    final = brute_force([net[0].weight, net[2].weight], biases=[net[0].bias, net[2].bias])
    assert_columns({c: table.loc[3, c] for c in REFERENCE_COLUMNS}, final)
    # validation at the epoch's end belongs to its row; the sanity check's never to step 0
    assert math.isnan(table.loc[0, "val_loss"])
    assert table["val_loss"].tolist()[1:] == pytest.approx([module.val_losses[s] for s in (4, 8, 12)])
    # train_loss as logged by the last training step of each epoch (run before the optimiser step)
    assert table["train_loss"].tolist()[1:] == pytest.approx([module.train_losses[s - 1] for s in (4, 8, 12)])
    assert Study(tmp_path / "tiny").run_status(7).status == "done"


def test_lightning_callback_every_n_steps_keeps_stale_validation_off_later_rows(tmp_path):
    from latent.collect.integrations.lightning import LatentCallback

    module = _lightning_module()
    _fit(module, LatentCallback(tmp_path, study="tiny", seed=3, every=1), epochs=2, val_check_interval=2)
    table = Study(tmp_path / "tiny").read_run(3)
    assert table["step"].tolist() == list(range(9))
    assert sorted(module.val_losses) == [2, 4, 6, 8]
    for step, value in zip(table["step"], table["val_loss"]):
        if step in module.val_losses:
            assert value == pytest.approx(module.val_losses[step])
        else:
            assert math.isnan(value), step  # no validation at this step: no carried-over value


def test_lightning_exception_leaves_the_run_partial_and_a_seed_is_required(tmp_path, monkeypatch):
    from latent.collect.integrations.lightning import LatentCallback

    with pytest.raises(RuntimeError, match="diverged"):
        _fit(_lightning_module(fail_at=5), LatentCallback(tmp_path, study="tiny", seed=1))
    status = Study(tmp_path / "tiny").run_status(1)
    assert status.status == "partial" and status.rows == 2  # steps 0 and 4
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    with pytest.raises(UserError, match="needs the run's seed"):
        _fit(_lightning_module(), LatentCallback(tmp_path, study="tiny"))
