"""Fourier progress measures for modular arithmetic (Nanda et al. 2023), batched over seeds.

Notation: S seeds, p the modulus, inputs (a, b) for all p² pairs; N the neuron activations
(S, p², H) of the layer whose output feeds the logits through W_logit (S, H, C); frequencies
k = 1 .. (p−1)/2 with w_k = 2πk/p.

A network that has learnt modular addition the way Nanda et al. describe embeds each operand on
a few circles (cos w_k x, sin w_k x), so its embedding is *sparse in the Fourier basis*, and its
neurons compute cos(w_k (a+b)) and sin(w_k (a+b)) for a few *key frequencies*, from which the
unembedding reads the answer. The measures, per seed, at one checkpoint:

* ``embed_gini``, ``unembed_gini``: the Gini coefficient of the per-frequency norms of the
  embedding (rows x = 0..p−1) and of the unembedding (output classes c = 0..p−1): 0 when every
  frequency carries the same weight, near 1 when a few carry all of it;
* ``embed_top_share``, ``unembed_top_share``: the share of the non-constant Fourier energy in
  the ``key_freqs`` largest frequencies;
* ``restricted_loss``: the training loss of the logits when the neuron activations keep only
  their mean over inputs and their components along cos(w_k(a+b)) and sin(w_k(a+b)) for the
  key frequencies; ``excluded_loss``: the training loss when exactly those key-frequency
  components are removed. Writing N = N̄ + P(N) + R (mean over inputs, key-frequency part,
  rest), the restricted logits are the network's output when these neurons carry N̄ + P(N), the
  excluded logits its output when they carry N − P(N); everything else the network adds (the
  attention path, biases, a LayerNorm after the MLP) is computed as it is, which is what Nanda
  et al.'s bias correction approximates. Where the logits are linear in N (no LayerNorm after
  it) restricted + excluded = the model's logits + the logits of the mean activation, exactly;
  when the activations are a function of a + b, keeping every frequency reproduces the model's
  loss exactly;
* ``sum_sq_weights``: the sum of the squares of every parameter;
* ``key_freq_1`` .. ``key_freq_n``: the key frequencies (k, by decreasing energy), and
  ``embed_f01`` .. the share of the embedding's non-constant Fourier energy in each frequency
  (the full spectrum: cheap, (p−1)/2 columns).

**Key frequencies, how chosen.** Nanda et al. take them once, from the fully trained model; a
measure recorded while training cannot know that model, so at each checkpoint and for each seed
the key frequencies are the ``key_freqs`` (default 5, ``--set key_freqs=N``) frequencies whose
cos/sin(w_k(a+b)) components carry the most energy of the neuron activations at that checkpoint.
Restricted loss then asks "do a few frequencies already carry the computation?", excluded loss
"does the network still work without them?".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: the progress group's feature columns (the key frequencies and the spectrum are recorded but
#: are not features: the first are labels, the second many near-collinear shares)
PROGRESS_FEATURES = ("embed_gini", "unembed_gini", "embed_top_share", "unembed_top_share", "restricted_loss",
                     "excluded_loss", "sum_sq_weights")


def progress_columns(p: int, key_freqs: int, ops=("add",)) -> list[str]:
    """Every column the progress group writes, in order (see :func:`op_group`)."""
    ops = tuple(ops)
    cols = list(PROGRESS_FEATURES)
    if len(ops) == 1:
        cols += [f"key_freq_{i + 1}" for i in range(min(key_freqs, (op_group(p, ops[0])[1] - 1) // 2))]
    else:
        for o in ops:
            n = op_group(p, o)[1]
            cols += [f"restricted_loss_{o}", f"excluded_loss_{o}"]
            cols += [f"key_freq_{o}_{i + 1}" for i in range(min(key_freqs, (n - 1) // 2))]
    if {"mul", "div"} & set(ops):
        cols.append("embed_gini_mul")
    return cols + [f"embed_f{k:02d}" for k in range(1, (p - 1) // 2 + 1)]


def primitive_root(p: int) -> int:
    """The smallest generator of the multiplicative group of Z_p (p prime)."""
    n = p - 1
    factors = {q for q in range(2, n + 1) if n % q == 0 and all(q % r for r in range(2, int(q**0.5) + 1))}
    return next(g for g in range(2, p) if all(pow(g, n // q, p) != 1 for q in factors)) if p > 2 else 1


def discrete_log(p: int) -> torch.Tensor:
    """``log[x]`` with g^log[x] = x mod p for x = 1..p−1 (log[0] = −1), g the primitive root."""
    g = primitive_root(p)
    out = torch.full((p,), -1, dtype=torch.long)
    x = 1
    for i in range(p - 1):
        out[x] = i
        x = x * g % p
    return out


def op_group(p: int, op: str) -> tuple[str, int]:
    """The cyclic group an operation's answer lives in, as the Fourier analysis sees it:
    ``("additive", p)`` for add and sub (the answer is a ± b in Z_p), ``("multiplicative", p − 1)``
    for mul and div (through discrete logarithms, a·b and a/b are log a ± log b in Z_{p−1})."""
    return ("multiplicative", p - 1) if op in ("mul", "div") else ("additive", p)


def op_combination(a: torch.Tensor, b: torch.Tensor, p: int, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's element of its operation's cyclic group (:func:`op_group`) and whether it has one
    (a product with a zero factor is in no multiplicative group)."""
    if op in ("add", "sub"):
        return ((a + b) if op == "add" else (a - b)) % p, torch.ones_like(a, dtype=torch.bool)
    log = discrete_log(p).to(a.device)
    valid = (a != 0) & (b != 0)
    la, lb = log[a].clamp_min(0), log[b].clamp_min(0)
    return ((la + lb) if op == "mul" else (la - lb)) % (p - 1), valid


def cyclic_basis(index: torch.Tensor, n: int, valid: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
    """Orthonormal cos(2πk·i/n) and sin(2πk·i/n) over the rows (``index`` i per row), k = 1..(n−1)/2
    (an even n's Nyquist frequency left out); rows not ``valid`` get 0. Shape (2K, rows), cos first."""
    K = (n - 1) // 2
    k = torch.arange(1, K + 1, dtype=torch.float64, device=index.device)
    ang = 2 * math.pi * k[:, None] * index.to(torch.float64)[None, :] / n
    B = torch.cat([torch.cos(ang), torch.sin(ang)])
    if valid is not None:
        B = B * valid.to(torch.float64)[None, :]
    return (B / B.norm(dim=1, keepdim=True).clamp_min(1e-300)).to(dtype)


def fourier_basis(p: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal cos and sin vectors over Z_p for k = 1..(p−1)/2: two (K, p) tensors."""
    x = torch.arange(p, device=device, dtype=torch.float64)
    k = torch.arange(1, (p - 1) // 2 + 1, device=device, dtype=torch.float64)
    ang = 2 * math.pi * k[:, None] * x[None, :] / p
    scale = math.sqrt(2.0 / p)
    return (torch.cos(ang) * scale).to(dtype), (torch.sin(ang) * scale).to(dtype)


def frequency_energy(W: torch.Tensor, p: int) -> torch.Tensor:
    """Energy of each frequency of ``W`` (S, p, d) along its second axis: (S, K), the sum over
    columns of the squared cos and sin coefficients (the constant term left out)."""
    cos, sin = fourier_basis(p, W.device, W.dtype)
    c = torch.matmul(cos, W)  # (S, K, d); a broadcast matmul, several times faster here than einsum's plan
    s = torch.matmul(sin, W)
    return (c * c).sum(-1) + (s * s).sum(-1)


def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of each row of the non-negative ``x`` (S, K): Σ_ij |x_i − x_j| / (2K Σ x)."""
    xs, _ = torch.sort(x, dim=-1)
    K = x.shape[-1]
    i = torch.arange(1, K + 1, device=x.device, dtype=x.dtype)
    total = xs.sum(-1)
    # the sorted-order form of the mean absolute difference: Σ (2i − K − 1) x_(i) / (K Σ x)
    g = ((2 * i - K - 1) * xs).sum(-1) / (K * total.clamp_min(torch.finfo(x.dtype).tiny))
    return torch.where(total > 0, g, torch.zeros_like(g))


def top_share(energy: torch.Tensor, n: int) -> torch.Tensor:
    """Share of each row's total in its ``n`` largest entries."""
    top = torch.topk(energy, min(n, energy.shape[-1]), dim=-1).values.sum(-1)
    return top / energy.sum(-1).clamp_min(torch.finfo(energy.dtype).tiny)


def sum_frequency_basis(p: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Orthonormal cos(w_k(a+b)) and sin(w_k(a+b)) over all p² pairs (row-major a, b), k = 1..(p−1)/2:
    shape (2K, p²), cos rows first."""
    idx = (torch.arange(p, device=device)[:, None] + torch.arange(p, device=device)[None, :]).reshape(-1) % p
    return cyclic_basis(idx, p, dtype=dtype)


def restricted_excluded(acts: torch.Tensor, readout, labels: torch.Tensor, train_rows: torch.Tensor, p: int,
                        key_freqs: int, basis: torch.Tensor | None = None, linear=None):
    """Restricted and excluded training losses and the key frequencies (module docstring).

    Parameters
    ----------
    acts : (S, p², H) neuron activations for every pair (row-major a, b)
    readout : callable
        ``readout(h, rows)``: activations ``h`` (S, n, H) at pairs ``rows`` (S, n) -> the logits
        there (S, n, C), the rest of the network as it is (the model's own logits at the
        training rows are ``readout(acts at those rows, train_rows)``).
    labels : (p²,) the answer of every pair
    train_rows : (S, n) each seed's training rows
    p, key_freqs : int
    basis : (2K, rows), optional
        The frequencies' cos and sin vectors over the rows (:func:`cyclic_basis`); default: those
        of a + b over the p² pairs (:func:`sum_frequency_basis`).
    linear : callable, optional
        For a readout that is affine in the activations, ``readout(h, rows) = c(rows) + h M``:
        ``linear(h)`` = h M for a few rows ``h`` (S, r, H). Then the key-frequency part is read out
        through M once per frequency (P(N) M = basisᵀ (coef M)) instead of being built at every
        training row, and the restricted logits are ``readout(mean, rows)`` plus that: the same
        numbers (to rounding) for a third less work. None: the readout is used as it is.

    Returns
    -------
    restricted, excluded : (S,) float64, mean cross-entropy over each seed's training rows
    keys : (S, key_freqs) long, the key frequencies k (1-based), by decreasing energy
    """
    S, P2, H = acts.shape
    basis = sum_frequency_basis(p, acts.device, acts.dtype) if basis is None else basis.to(acts)  # (2K, rows)
    K = basis.shape[0] // 2
    n_key = min(int(key_freqs), K)
    coef = torch.matmul(basis, acts)  # (S, 2K, H): broadcast matmul (einsum's plan here is ~3x slower)
    energy = (coef[:, :K] ** 2).sum(-1) + (coef[:, K:] ** 2).sum(-1)  # (S, K)
    keys = torch.topk(energy, n_key, dim=-1).indices  # (S, n_key): frequency k − 1
    rows = torch.cat([keys, keys + K], dim=1)  # their cos and sin rows of the basis
    kc = torch.gather(coef, 1, rows[:, :, None].expand(-1, -1, H))  # (S, 2n, H)
    # only the training rows are read out: P(N) there, from the key rows of the basis there
    kb = torch.gather(basis[rows], 2, train_rows[:, None, :].expand(-1, rows.shape[1], -1))  # (S, 2n, n_train)
    at_rows = torch.gather(acts, 1, train_rows[:, :, None].expand(-1, -1, H))
    mean = acts.mean(dim=1, keepdim=True)
    y = labels[train_rows]  # (S, n)

    def loss(z):
        # per-example losses in the logits' precision (float32: absolute error ~1e-6, far below the
        # changes the fit sees), their mean in float64
        per = F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), reduction="none")
        return per.view(S, -1).double().mean(1)

    if linear is not None:
        key_logits = torch.bmm(kb.transpose(1, 2), linear(kc))  # P(N) M at the training rows (S, n_train, C)
        restricted = loss(readout(mean, train_rows) + key_logits)
        excluded = loss(readout(at_rows, train_rows) - key_logits)
    else:
        key_part = torch.einsum("sfx,sfh->sxh", kb, kc)  # P(N) at the training rows
        restricted = loss(readout(mean + key_part, train_rows))
        excluded = loss(readout(at_rows - key_part, train_rows))
    return restricted, excluded, keys + 1


def sum_sq(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ of squared parameters per seed (every tensor's leading axis is the seed)."""
    return sum((v.detach().double() ** 2).flatten(1).sum(1) for v in params.values())
