"""Seed streams: one run seed fans out into independent, recorded streams.

A run's seed fixes its initialisation and its data order; the train/test split has its own
stream. Streams are derived with :class:`numpy.random.SeedSequence` (never ``seed + i``), so
they are statistically independent and the same for a seed whatever batch it is trained in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Spawn keys of the streams derived from a run seed. Fixed forever: changing them changes runs.
_STREAM_KEYS = {"init": 0, "order": 1, "split": 2, "llc": 3}


def _stream(entropy: int, name: str) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=int(entropy), spawn_key=(_STREAM_KEYS[name],))


def _as_int63(seq: np.random.SeedSequence) -> int:
    # torch.manual_seed takes a 64-bit integer; keep it positive.
    return int(seq.generate_state(1, dtype=np.uint64)[0] & np.uint64(2**63 - 1))


@dataclass(frozen=True)
class RunSeeds:
    """The integer seeds of one run's streams.

    Attributes
    ----------
    seed : int
        The run seed (names the run).
    init : int
        Seeds the torch generator that draws the initial parameters.
    order : int
        Seeds the torch generator that shuffles minibatches.
    split : int
        Seeds the numpy generator that draws the train/test split. Derived from the run seed
        by default (as in the reference); from ``split_seed`` when the study shares one split.
    """

    seed: int
    init: int
    order: int
    split: int

    @classmethod
    def derive(cls, seed: int, split_seed: int | None = None) -> "RunSeeds":
        """Derive every stream of run ``seed``; ``split_seed`` fixes one split for a whole study."""
        if int(seed) < 0:
            raise ValueError(f"seeds must be non-negative, got {seed}")
        split_source = seed if split_seed is None else split_seed
        return cls(
            seed=int(seed),
            init=_as_int63(_stream(seed, "init")),
            order=_as_int63(_stream(seed, "order")),
            split=_as_int63(_stream(split_source, "split")),
        )

    def as_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "init": self.init, "order": self.order, "split": self.split}


def llc_seed(seed: int, step: int) -> int:
    """The seed of run ``seed``'s LLC sampler at ``step`` (:mod:`latent.collect.llc`): its own stream, so
    an estimate is the same in any batch, on resume, and whatever other checkpoints were measured."""
    seq = np.random.SeedSequence(entropy=int(seed), spawn_key=(_STREAM_KEYS["llc"], int(step)))
    return _as_int63(seq)
