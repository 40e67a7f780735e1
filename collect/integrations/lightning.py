"""``LatentCallback`` for Lightning: record a study while a ``Trainer`` fits a ``LightningModule``.

::

    import lightning as L
    from latent.collect.integrations.lightning import LatentCallback

    L.seed_everything(3)
    trainer = L.Trainer(max_epochs=20, callbacks=[LatentCallback("data", study="mlp", convergence="val_acc>0.9")])
    trainer.fit(module, train_loader, val_loader)   # then: latent fit --study mlp

When. A row is logged when training starts (the initial weights), at the end of every
training epoch or, with ``every=N``, every N optimizer steps instead, and when training ends.
The step is the trainer's ``global_step`` (optimizer steps).

Values. A row carries the scalars in ``trainer.callback_metrics`` that training logged
(``self.log("train_loss", ...)``), and the ones a validation run at the same step logged
(``val_loss``, ...); validation metrics from an earlier step are never carried over to a later
row. Validation at the end of an epoch runs before the epoch's row is written; with
``every=N``, set ``val_check_interval`` to a multiple of N to have them on those rows.

Only the global-zero process records. The seed is ``seed=`` or else the one given to
``lightning.seed_everything`` (``PL_GLOBAL_SEED``). Fitting from a checkpoint (``ckpt_path``)
resumes the run (``Recorder(resume=True)``). An exception during fitting leaves the run
unfinished (``partial``), with the rows logged so far.
"""

from __future__ import annotations

import math
import os

import lightning.pytorch as pl

from latent.errors import UserError

from ..recorder import RESERVED, Recorder, check_metric_variant


def _scalars(metrics) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):  # not a scalar
            continue
        if key not in RESERVED:
            out[str(key)] = number
    return out


class LatentCallback(pl.Callback):
    """Records the reference's weight statistics and the logged metrics into a study.

    Parameters
    ----------
    store : str or path
        The store directory.
    study : str
        The study name.
    seed : int, optional
        The run's seed; default the ``seed_everything`` seed.
    convergence : str, optional
        E.g. ``"val_acc>0.9"`` (a metric the module logs).
    every : int, optional
        Log every ``every`` optimizer steps instead of at each epoch end.
    metric_variant : {"reference", "paper"}
        The definitions of the 14 columns (:func:`latent.collect.metrics.reference_metrics`): the
        reference code's (the default) or the paper's wording (population variances, pooled
        singular values). Recorded in ``study.json``; a study keeps the variant it was created
        with.
    **options
        Passed to :class:`latent.collect.recorder.Recorder` (``include``, ``exclude``, ``overwrite``, ...).
    """

    def __init__(self, store: str | os.PathLike = "data", *, study: str, seed: int | None = None,
                 convergence: str | None = None, every: int | None = None, metric_variant: str = "reference",
                 **options):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be a whole number >= 1, got {every!r}")
        self.metric_variant = check_metric_variant(metric_variant)
        self.store, self.study, self.seed, self.convergence = store, study, seed, convergence
        self.every, self.options = every, options
        self.recorder: Recorder | None = None
        self._val_keys: set[str] = set()
        self._val: tuple[int, dict[str, float]] = (-1, {})
        self._before: dict[str, float] = {}

    def _seed(self) -> int:
        if self.seed is not None:
            return self.seed
        env = os.environ.get("PL_GLOBAL_SEED")
        if env is None or not env.strip().lstrip("-").isdigit():
            raise UserError("LatentCallback needs the run's seed: pass seed=N, or call lightning.seed_everything(N) "
                            "before fitting")
        return int(env)

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        self.recorder = Recorder(self.store, study=self.study, seed=self._seed(), convergence=self.convergence,
                                 metric_variant=self.metric_variant, resume=trainer.global_step > 0, **self.options)
        self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.every is not None and trainer.global_step % self.every == 0:
            self._log(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module):
        self._before = _scalars(trainer.callback_metrics)

    def on_validation_end(self, trainer, pl_module):
        if self.recorder is None or trainer.sanity_checking:
            return
        # what this validation logged: the keys that appeared or changed while it ran
        now = _scalars(trainer.callback_metrics)
        logged = {k: v for k, v in now.items() if k not in self._before or not _same(self._before[k], v)}
        self._val_keys |= set(logged)
        step = trainer.global_step
        self._val = (step, {k: now[k] for k in self._val_keys if k in now})
        if self.recorder.last_step == step:
            self.recorder.add(step, **self._val[1])

    def on_train_epoch_end(self, trainer, pl_module):
        if self.every is None:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.recorder is None:
            return
        try:
            self._log(trainer, pl_module)
        finally:
            self.recorder.close()
            self.recorder = None

    def on_exception(self, trainer, pl_module, exception):
        if self.recorder is not None:
            self.recorder.close(done=False)
            self.recorder = None

    def _log(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if self.recorder is None or self.recorder.last_step == step:
            return
        metrics = _scalars(trainer.callback_metrics)
        values = {k: v for k, v in metrics.items() if k not in self._val_keys}
        if self._val[0] == step:
            values.update(self._val[1])
        self.recorder.log(step, pl_module, **values)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
