"""``LatentCallback`` for the Hugging Face ``Trainer``: record a study while it trains.

::

    from latent.collect.integrations.hf import LatentCallback

    trainer = Trainer(model, args, train_dataset=..., eval_dataset=...,
                      callbacks=[LatentCallback("data", study="bert-tiny", convergence="eval_loss<2.0")])
    trainer.train()                                   # one seed: args.seed
    # more seeds: run again with another TrainingArguments(seed=...), then latent fit --study bert-tiny

When. A row is logged when training begins (the initial weights), at every checkpoint the
Trainer saves (``save_strategy``/``save_steps``) or, with ``every=N``, every N optimizer steps
instead, and when training ends. The step is the Trainer's ``global_step``.

Values. Whatever the Trainer logs at a row's step (``loss``, ``grad_norm``, ``learning_rate``,
``epoch``, and the ``eval_*`` metrics of an evaluation at that step, not timings) is added to
that row; the Trainer logs and evaluates after the step ends and before it saves, so align
``logging_steps``/``eval_steps`` with ``save_steps`` (or ``every``) to have them on every row.

Only the main process records (``state.is_world_process_zero``). The seed is ``args.seed``
unless ``seed=`` is given. Resuming the Trainer from a checkpoint resumes the run
(``Recorder(resume=True)``): its rows before the resumed step are kept.
"""

from __future__ import annotations

import os

from transformers import TrainerCallback

from ..checkpoints import log_scalars
from ..recorder import RESERVED, Recorder, check_metric_variant


class LatentCallback(TrainerCallback):
    """Records the reference's weight statistics and the Trainer's metrics into a study.

    Parameters
    ----------
    store : str or path
        The store directory.
    study : str
        The study name.
    seed : int, optional
        The run's seed; default ``args.seed``.
    convergence : str, optional
        E.g. ``"eval_accuracy>0.9"`` or ``"eval_loss<2.0"`` (a metric the Trainer logs).
    every : int, optional
        Log every ``every`` optimizer steps instead of at each save.
    metric_variant : {"reference", "paper"}
        The definitions of the 14 columns (:func:`latent.collect.metrics.reference_metrics`): the
        reference code's (the default) or the paper's wording (population variances, pooled
        singular values). Recorded in ``study.json``; a study keeps the variant it was created
        with.
    **options
        Passed to :class:`latent.collect.recorder.Recorder` (``include``, ``exclude``, ``overwrite``,
        ``flush_every``, ...).
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
        self._values: dict[str, float] = {}
        self._values_step = -1

    # the Trainer calls these; each returns None, so the callback never steers training

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        seed = args.seed if self.seed is None else self.seed
        self.recorder = Recorder(self.store, study=self.study, seed=seed, convergence=self.convergence,
                                 metric_variant=self.metric_variant, resume=state.global_step > 0, **self.options)
        self._log(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every is not None and state.global_step % self.every == 0:
            self._log(state.global_step, model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.every is None:
            self._log(state.global_step, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.recorder is None or not logs:
            return
        values = {k: v for k, v in log_scalars(logs).items() if k not in RESERVED}
        if state.global_step != self._values_step:
            self._values, self._values_step = {}, state.global_step
        self._values.update(values)
        if values and self.recorder.last_step == state.global_step:
            self.recorder.add(state.global_step, **values)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.recorder is None:
            return
        try:
            self._log(state.global_step, model)
        finally:
            self.recorder.close()
            self.recorder = None

    def _log(self, step: int, model) -> None:
        if self.recorder is None or model is None or self.recorder.last_step == step:
            return
        values = self._values if self._values_step == step else {}
        self.recorder.log(step, model, **values)
