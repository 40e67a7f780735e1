"""Function-space observables on a fixed probe set, batched over seeds.

Notation: S seeds, n probe examples per seed, C classes, D penultimate units.

The weight statistics say where the parameters are; these say what the network *does* on a
fixed set of inputs, at every checkpoint (the probe set: ``PROBE_SIZE`` of each seed's validation
examples, evenly spaced through them, the same at every checkpoint; :func:`probe_rows`):

* ``pred_entropy``: the mean entropy (nats) of the predicted class distribution softmax(z);
* ``logit_scale``: the effective logit scale, the mean over examples of the root mean square of
  the centred logits, sqrt(mean_c (z_c − mean_c z)²). The softmax saturates as it grows, and the
  loss a correct answer can reach falls with it, so it measures how confidently the network
  commits, whatever it commits to;
* ``effective_dim``: the participation ratio (Σλ)² / Σλ² of the eigenvalues of the covariance of
  the penultimate representation over the probe set: 1 when one direction carries all the
  variance, D when every direction carries the same;
* ``loss_q10``, ``loss_q50``, ``loss_q90``: quantiles of the per-example loss (the task's own
  loss: cross-entropy, or hinge for sparse parity).

A task whose output is one score f (sparse parity) reads it as the logits (0, f), i.e. the
distribution (1 − σ(f), σ(f)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: the function group's columns
FUNCTION_COLUMNS = ("pred_entropy", "logit_scale", "effective_dim", "loss_q10", "loss_q50", "loss_q90")
#: probe examples per seed (fewer when the validation split is smaller)
PROBE_SIZE = 512


@dataclass
class Probe:
    """A problem's outputs on its probe set: ``logits`` (S, n, C), ``penultimate`` (S, n, D) and
    the per-example ``losses`` (S, n)."""

    logits: torch.Tensor
    penultimate: torch.Tensor
    losses: torch.Tensor


def participation_ratio(x: torch.Tensor) -> torch.Tensor:
    """(Σλ)² / Σλ² of the covariance of each seed's rows ``x`` (S, n, D), via the smaller Gram."""
    x = x.double()
    xc = x - x.mean(dim=1, keepdim=True)
    n, d = xc.shape[1], xc.shape[2]
    g = xc @ xc.transpose(1, 2) if n <= d else xc.transpose(1, 2) @ xc  # same non-zero eigenvalues
    tr = torch.diagonal(g, dim1=1, dim2=2).sum(-1)
    tr2 = (g * g).sum((1, 2))
    return torch.where(tr2 > 0, tr * tr / tr2.clamp_min(1e-300), torch.zeros_like(tr))


def function_metrics(probe: Probe) -> dict[str, torch.Tensor]:
    """The function group's values (S,) from a :class:`Probe` (module docstring)."""
    z = probe.logits.double()
    logp = torch.log_softmax(z, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1).mean(1)
    centred = z - z.mean(-1, keepdim=True)
    scale = centred.pow(2).mean(-1).sqrt().mean(1)
    q = torch.quantile(probe.losses.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64,
                                                           device=probe.losses.device), dim=1)
    return {"pred_entropy": entropy, "logit_scale": scale, "effective_dim": participation_ratio(probe.penultimate),
            "loss_q10": q[0], "loss_q50": q[1], "loss_q90": q[2]}


def probe_rows(val_idx: torch.Tensor, size: int = PROBE_SIZE) -> torch.Tensor:
    """Each seed's probe rows (S, min(size, n_val)): ``size`` of its validation rows, evenly spaced
    through them (the rows are sorted, so the probe spans the whole split; no randomness)."""
    n = val_idx.shape[1]
    if n <= size:
        return val_idx
    pos = torch.div(torch.arange(size, device=val_idx.device) * n, size, rounding_mode="floor")
    return val_idx[:, pos]
