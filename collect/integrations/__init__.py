"""Callbacks that record a study from a framework's training loop, for the frameworks that have one.

* :mod:`latent.collect.integrations.hf`: ``LatentCallback`` for the Hugging Face ``Trainer``
  (``pip install -e ".[hf]"``);
* :mod:`latent.collect.integrations.lightning`: ``LatentCallback`` for Lightning
  (``pip install -e ".[lightning]"``).

Both are thin: they open a :class:`latent.collect.recorder.Recorder` when training starts, log the
model's weights at the steps they are told to, attach the framework's logged metrics to the
rows of the steps they were logged at, and close the recorder when training ends. Neither the
core (``latent``) nor the rest of ``collect`` imports them, so neither framework is needed
unless you use its callback. Docs: ``docs/own-runs.md``.
"""
