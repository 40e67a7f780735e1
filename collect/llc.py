"""The local learning coefficient (LLC) of every seed, sampled with devinterp's SGLD.

The ``llc`` metric group (``latent collect --metric-groups llc``, the ``[devinterp]`` extra).
At a checkpoint with weights w*, Lau et al. (2023) estimate the LLC as

    λ̂(w*) = nβ · ( E_w[ L_m(w) ] − L_m(w*) ),

the expectation over a tempered posterior localised at w*, drawn by stochastic-gradient
Langevin dynamics (SGLD): each step moves w by −(ε/2)(nβ ∇L_m(w) + γ (w − w*)) plus Gaussian
noise of variance ε. Here L_m is the mean training loss over m rows (the whole training split
when it has at most ``batch_size`` rows), ε is ``lr``, γ is ``localization`` and nβ is ``nbeta`` (0: n / log n
for a run's n training rows, Watanabe's β* = 1 / log n as Lau et al. use it; devinterp's own
default puts the batch size in place of n, which would tie the estimate's scale to the batch).
The sampler is :meth:`devinterp.optim.SGMCMC.sgld`; this module only feeds
it, per seed, the parameters of one seed of a batched model.

What makes it exact in the sense of the other statistics:

* **Batched equals alone.** Each seed's parameters are their own leaf tensors with their own
  sampler, and its noise (and minibatches) come from its own generator, seeded from the run seed
  and the checkpoint's step (:func:`latent.collect.seeds.llc_seed`); the forward pass is the task's
  batched one, whose per-seed results match a lone seed's to the tolerance the tests use.
* **Resume equals uninterrupted.** An estimate depends only on the weights at that checkpoint
  and its seed; the training weights, optimiser and data order are never touched.
* **Thinned.** One estimate costs ``chains × (burnin + draws)`` forward and backward passes, so
  it is made at every ``every``-th checkpoint (0, every, 2·every, … by checkpoint count); the
  other checkpoints record NaN, and ``latent fit`` uses the measured ones only when ``llc`` is
  among its features.

Columns: ``llc`` (the mean over chains) and ``llc_std`` (the standard deviation of the chains'
estimates: how far the sampler agrees with itself; NaN with one chain). Only ``llc`` is a fit
feature. The estimate is noisy by construction and depends on the sampler's settings (recorded
in ``study.json`` under ``llc``); compare values across checkpoints and seeds of one study, not
across studies with other settings.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Sequence

import torch

from latent.errors import UserError

from .seeds import llc_seed

#: the group's columns, and those that are fit features
LLC_COLUMNS = ("llc", "llc_std")
LLC_FEATURES = ("llc",)


@dataclass(frozen=True)
class LLCConfig:
    """Settings of the LLC estimate (``latent collect --llc KEY=VALUE``; recorded in ``study.json``).

    Attributes
    ----------
    every : int
        Estimate at every ``every``-th checkpoint (by count, from the first).
    chains : int
        Independent SGLD chains per estimate, all started at the checkpoint's weights.
    draws : int
        SGLD steps per chain whose losses are averaged.
    burnin : int
        SGLD steps per chain taken before the averaged ones.
    lr : float
        The SGLD step size ε.
    localization : float
        The pull γ back to the checkpoint's weights.
    nbeta : float
        The inverse temperature nβ; 0 means n / log n for a run's n training rows.
    batch_size : int
        Training rows per SGLD step, each seed drawing its own; the whole training split when it
        has no more rows (0: always the whole split).
    """

    every: int = 20
    chains: int = 2
    draws: int = 40
    burnin: int = 20
    lr: float = 1e-3
    localization: float = 100.0
    nbeta: float = 0.0
    batch_size: int = 256

    def validate(self) -> None:
        for name in ("every", "chains", "draws"):
            if getattr(self, name) < 1:
                raise UserError(f"--llc {name} must be at least 1, got {getattr(self, name)}")
        if self.burnin < 0 or self.batch_size < 0:
            raise UserError("--llc burnin and batch_size must be >= 0 (batch_size 0: the whole training split)")
        for name in ("lr", "localization", "nbeta"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise UserError(f"--llc {name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, got {value}")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_llc(items: Sequence[str] | None) -> LLCConfig:
    """``--llc KEY=VALUE`` options (repeatable) as a validated :class:`LLCConfig`."""
    values: dict = {}
    known = {f.name: f.type for f in fields(LLCConfig)}
    for item in items or ():
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise UserError(f"--llc takes KEY=VALUE with KEY one of {', '.join(known)}, got {item!r}")
        kind = int if known[key] in ("int", int) else float
        try:
            values[key] = kind(raw)
        except ValueError:
            raise UserError(f"--llc {key} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    cfg = LLCConfig(**values)
    cfg.validate()
    return cfg


def require_devinterp() -> None:
    """Refuse the group in one line when devinterp is not installed."""
    try:
        import devinterp  # noqa: F401
    except ImportError:
        raise UserError("the llc metric group needs devinterp: pip install -e '.[devinterp]' "
                        "(or leave llc out of --metric-groups)") from None


class LLCSampler:
    """Estimates the LLC of every seed of a batched problem at the checkpoints on its grid.

    Parameters
    ----------
    cfg : LLCConfig
    run_seeds : sequence of int
        The run seed of each of the problem's seeds, in order (they seed each seed's noise).
    """

    def __init__(self, cfg: LLCConfig, run_seeds: Sequence[int]):
        require_devinterp()
        self.cfg = cfg
        self.run_seeds = [int(s) for s in run_seeds]

    def measures(self, index: int) -> bool:
        """Whether the checkpoint with this index (0, 1, … in the schedule) is on the grid."""
        return index % self.cfg.every == 0

    def nan_row(self, n: int) -> dict[str, torch.Tensor]:
        return {c: torch.full((n,), float("nan"), dtype=torch.float64) for c in LLC_COLUMNS}

    def estimate(self, problem, step: int) -> dict[str, torch.Tensor]:
        """Per-seed ``llc`` and ``llc_std`` at the problem's current weights (left unchanged)."""
        from devinterp.optim import SGMCMC

        cfg = self.cfg
        train_idx = problem.train_idx
        S, n = train_idx.shape
        m = n if cfg.batch_size == 0 else min(cfg.batch_size, n)
        nbeta = cfg.nbeta if cfg.nbeta > 0 else (n / math.log(n) if n > 1 else 1.0)
        names = list(problem.params)
        start = {k: v.detach() for k, v in problem.params.items()}
        device = train_idx.device
        gens = [torch.Generator(device=device).manual_seed(llc_seed(s, step)) for s in self.run_seeds]
        with torch.no_grad():
            init = problem.loss_at(start, train_idx) / n  # L_n(w*) on the whole split, per seed
        per_chain = torch.zeros(cfg.chains, S, dtype=torch.float64)
        for c in range(cfg.chains):
            leaves = [{k: start[k][i:i + 1].clone().requires_grad_(True) for k in names} for i in range(S)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # devinterp warns about nbeta = 1 (tiny batches only)
                samplers = [SGMCMC.sgld(list(leaf.values()), lr=cfg.lr, localization=cfg.localization, nbeta=nbeta)
                            for leaf in leaves]
            total = torch.zeros(S, dtype=torch.float64)
            for t in range(cfg.burnin + cfg.draws):
                if m == n:
                    rows = train_idx
                else:
                    rows = torch.stack([train_idx[i, torch.randperm(n, generator=g, device=device)[:m]]
                                        for i, g in enumerate(gens)])
                params = {k: torch.cat([leaf[k] for leaf in leaves]) for k in names}
                loss = problem.loss_at(params, rows) / m  # per seed mean over the batch
                for sampler in samplers:
                    sampler.zero_grad(set_to_none=True)
                loss.sum().backward()  # seeds are independent: each leaf gets its own seed's gradient
                if t >= cfg.burnin:
                    total += loss.detach().cpu().double()
                for sampler, g in zip(samplers, gens):
                    sampler.step(noise_generator=g)
            per_chain[c] = nbeta * (total / cfg.draws - init.cpu().double())
        llc = per_chain.mean(0)
        spread = per_chain.std(0, correction=1) if cfg.chains > 1 else torch.full((S,), float("nan"), dtype=torch.float64)
        # a chain that diverged gives a non-finite or absurd value: recorded as it is (NaN stays NaN)
        return {"llc": llc, "llc_std": spread}

