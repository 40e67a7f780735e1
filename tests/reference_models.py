"""Plain single-seed modules for modular addition, written independently of the batched code.

They compute every position with ordinary nn layers (no table shortcuts, no seed batching), so
agreement with ``latent.collect.tasks.modadd`` checks the shortcuts and the batching.
"""

import math

import torch
import torch.nn.functional as F


def mlp_forward(P, a, b, d, op=None):
    """P: one seed's params (E, W1, b1, W2, b2, and O with several operations); a, b, op: (N,)."""
    x = torch.cat([P["E"][a], P["E"][b]] + ([P["O"][op]] if "O" in P else []), dim=-1)  # (N, 2d or 3d)
    h = torch.relu(x @ P["W1"].T + P["b1"][0])
    return h @ P["W2"].T + P["b2"][0]


def transformer_forward(P, a, b, p, n_heads, layernorm, op=None):
    """Full 3-token transformer with a causal mask; returns logits at the last position. With
    operations ``op``, the last token is operation op's "=" (token p + op)."""
    eq = torch.full_like(a, p) if op is None else p + op
    tokens = torch.stack([a, b, eq], dim=1)  # (N, 3)
    x = P["W_E"][tokens] + P["W_pos"][None]  # (N, 3, d)
    n, t, d = x.shape
    dh = d // n_heads
    q = torch.einsum("hed,ntd->nhte", P["W_Q"], x)
    k = torch.einsum("hed,ntd->nhte", P["W_K"], x)
    v = torch.einsum("hed,ntd->nhte", P["W_V"], x)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (N, H, 3, 3)
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(mask, float("-inf"))
    z = torch.softmax(scores, dim=-1) @ v  # (N, H, 3, dh)
    z = z.permute(0, 2, 1, 3).reshape(n, t, n_heads * dh)
    resid = x + z @ P["W_O"].T
    if layernorm:
        resid = F.layer_norm(resid, (d,), P["ln1_w"][0], P["ln1_b"][0])
    hidden = torch.relu(resid @ P["W_in"].T + P["b_in"][0])
    resid = resid + hidden @ P["W_out"].T + P["b_out"][0]
    if layernorm:
        resid = F.layer_norm(resid, (d,), P["ln2_w"][0], P["ln2_b"][0])
    return (resid @ P["W_U"])[:, -1]
