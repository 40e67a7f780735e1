"""latent.collect.modules: which tensors of any model count, checked against a brute-force numpy oracle.

The oracle (:func:`brute_force`) computes the reference's definitions (reference.md B1–B5)
directly with numpy's SVD from matrices, kernels and bias vectors that each test lists by
hand, so a wrong selection rule or a wrong aggregation shows up as a mismatch.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from latent.collect.modules import (describe, module_metrics, select_module, select_state_dict, state_dict_metrics)
from latent.errors import UserError
from latent.store import REFERENCE_COLUMNS


def _np(t) -> np.ndarray:
    return t.detach().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)


def brute_force(matrices, convs=(), weights=None, biases=()) -> dict[str, float]:
    """The 14 columns from first principles.

    matrices: 2-D arrays (every head a separate one); convs: kernels ``(out, in, ...)``;
    weights: arrays whose entries make ``w_all`` (default: the matrices and kernels);
    biases: arrays whose entries make ``b_all``.
    """
    matrices = [_np(m) for m in matrices]
    convs = [_np(k) for k in convs]
    weights = matrices + convs if weights is None else [_np(w) for w in weights]
    cols = {k: [] for k in ("l1", "l2", "code_sparsity", "trace", "spectral", "computational_sparsity",
                            "mean_lambda", "variance_lambda")}
    for w in matrices:
        sv = np.linalg.svd(w, compute_uv=False)
        l1, l2 = np.abs(w).sum(), math.sqrt((w ** 2).sum())
        trace = sum(w[i, i] for i in range(min(w.shape)))
        kept = np.where(sv < 1e-5, 0.0, sv)
        cols["l1"].append(l1)
        cols["l2"].append(l2)
        cols["code_sparsity"].append(l1 / l2)
        cols["trace"].append(trace)
        cols["spectral"].append(sv.max())
        cols["computational_sparsity"].append(trace / sv.max())
        cols["mean_lambda"].append(kept.mean())
        cols["variance_lambda"].append(kept.var(ddof=1) if len(kept) > 1 else math.nan)
    for k in convs:
        flat = k.reshape(k.shape[0], k.shape[1], -1)  # one row per (out, in) kernel slice
        l1s, l2s = np.abs(flat).sum(-1), np.sqrt((flat ** 2).sum(-1))
        cols["l1"].append(l1s.mean())
        cols["l2"].append(l2s.mean())
        cols["code_sparsity"].append((l1s / l2s).mean())
    out = {k: (float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else math.nan) for k, v in cols.items()}
    for prefix, parts in (("w", weights), ("b", [_np(b) for b in biases])):
        if parts:
            x = np.sort(np.concatenate([p.ravel() for p in parts]))
            out[f"mean_{prefix}"] = float(x.mean())
            out[f"median_{prefix}"] = float(x[(len(x) - 1) // 2])  # the lower middle value
            out[f"var_{prefix}"] = float(x.var(ddof=1))
        else:
            out[f"mean_{prefix}"] = out[f"median_{prefix}"] = out[f"var_{prefix}"] = math.nan
    return {k: out[k] for k in REFERENCE_COLUMNS}


def assert_columns(got: dict, want: dict, rel: float = 1e-7) -> None:
    assert list(got) == list(REFERENCE_COLUMNS)
    for key in REFERENCE_COLUMNS:
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-12), key


def _heads(w: torch.Tensor, n: int) -> list[torch.Tensor]:
    return list(w.detach().reshape(n, -1, w.shape[1]))


# --------------------------------------------------------------------------- by architecture


def test_linear_mlp_matches_brute_force():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Linear(3, 1))
    want = brute_force([mlp[0].weight, mlp[2].weight, mlp[3].weight],
                       biases=[mlp[0].bias, mlp[2].bias, mlp[3].bias])
    assert_columns(module_metrics(mlp), want)
    # the 1x3 output layer has one singular value: its NaN variance is skipped, not propagated
    assert not math.isnan(want["variance_lambda"])


def test_conv_net_kernels_count_as_slices_and_batchnorm_is_excluded():
    torch.manual_seed(1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.conv1d = nn.Conv1d(2, 3, 5, bias=False)
            self.conv3d = nn.Conv3d(1, 2, (2, 3, 3))
            self.fc = nn.Linear(8, 5)

    net = Net()
    with torch.no_grad():  # non-trivial BN parameters, which must not count
        net.bn.weight.uniform_(0.5, 2.0)
        net.bn.bias.uniform_(-1, 1)
    want = brute_force([net.fc.weight], convs=[net.conv.weight, net.conv1d.weight, net.conv3d.weight],
                       biases=[net.conv.bias, net.conv3d.bias, net.fc.bias])
    got = module_metrics(net)
    assert_columns(got, want)
    # l1 mixes the three kernels' slice means with the fc's whole-matrix L1 (reference B5);
    # the spectral columns come from fc alone
    fc = _np(net.fc.weight)
    assert got["spectral"] == pytest.approx(np.linalg.svd(fc, compute_uv=False)[0], rel=1e-9)


def test_multihead_attention_is_split_into_q_k_v_per_head():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(8, 2)
    w = mha.in_proj_weight.detach()
    pieces = [w[i:i + 4] for i in range(0, 24, 4)]  # Q head 0, Q head 1, K head 0, ..., V head 1
    want = brute_force(pieces + [mha.out_proj.weight], weights=[w, mha.out_proj.weight],
                       biases=[mha.in_proj_bias, mha.out_proj.bias])
    assert_columns(module_metrics(mha), want)
    sel = select_module(mha)
    assert [e.shape for e in sel.entries if e.role == "matrix"] == [(6, 4, 8), (1, 8, 8)]


def test_multihead_attention_with_other_key_and_value_sizes():
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=5, bias=False)
    q, k, v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    want = brute_force(_heads(q, 2) + _heads(k, 2) + _heads(v, 2) + [mha.out_proj.weight],
                       weights=[q, k, v, mha.out_proj.weight])
    got = module_metrics(mha)
    assert_columns(got, want)
    assert math.isnan(got["mean_b"]) and select_module(mha).undefined == ("mean_b", "median_b", "var_b")


class TinyLM(nn.Module):
    """Embedding + a TransformerEncoderLayer + a final LayerNorm + an LM head (tied or not)."""

    def __init__(self, tied: bool = False):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.pos = nn.Parameter(torch.randn(5, 8))  # a raw parameter: excluded unless included
        self.layer = nn.TransformerEncoderLayer(8, 2, 16)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 11)
        if tied:
            self.head.weight = self.embed.weight


def _layer_parts(layer):
    attn = layer.self_attn
    matrices = _heads(attn.in_proj_weight, 6) + [attn.out_proj.weight, layer.linear1.weight, layer.linear2.weight]
    weights = [attn.in_proj_weight, attn.out_proj.weight, layer.linear1.weight, layer.linear2.weight]
    biases = [attn.in_proj_bias, attn.out_proj.bias, layer.linear1.bias, layer.linear2.bias]
    return matrices, weights, biases


def test_transformer_layer_counts_heads_and_excludes_embeddings_and_norms():
    torch.manual_seed(4)
    lm = TinyLM()
    matrices, weights, biases = _layer_parts(lm.layer)
    want = brute_force(matrices + [lm.head.weight], weights=weights + [lm.head.weight],
                       biases=biases + [lm.head.bias])
    assert_columns(module_metrics(lm), want)
    before = module_metrics(lm)
    with torch.no_grad():  # embeddings, norms and raw parameters do not count
        lm.embed.weight.mul_(3)
        lm.pos.add_(1)
        for norm in (lm.norm, lm.layer.norm1, lm.layer.norm2):
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)
    assert module_metrics(lm) == before


def test_lm_head_tied_to_the_embedding_is_excluded():
    torch.manual_seed(5)
    lm = TinyLM(tied=True)
    matrices, weights, biases = _layer_parts(lm.layer)
    want = brute_force(matrices, weights=weights, biases=biases)
    assert_columns(module_metrics(lm), want)
    assert_columns(state_dict_metrics(lm.state_dict(), heads=2), want)
    assert "head.weight" not in select_module(lm).names()


def test_recurrent_weights_count_by_name():
    torch.manual_seed(6)
    lstm = nn.LSTM(3, 4)
    names = ["weight_ih_l0", "weight_hh_l0"]
    want = brute_force([getattr(lstm, n) for n in names], biases=[lstm.bias_ih_l0, lstm.bias_hh_l0])
    assert_columns(module_metrics(lstm), want)


# --------------------------------------------------------------------------- include / exclude


def test_exclude_by_glob_and_regex():
    torch.manual_seed(7)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Linear(3, 2))
    want = brute_force([mlp[0].weight, mlp[3].weight], biases=[mlp[0].bias, mlp[3].bias])
    assert_columns(module_metrics(mlp, exclude="2.*"), want)
    assert_columns(module_metrics(mlp, exclude=["re:^2\\."]), want)
    assert_columns(module_metrics(mlp, exclude=[re.compile(r"^2\.")]), want)
    no_bias = module_metrics(mlp, exclude="*.bias")
    assert all(math.isnan(no_bias[c]) for c in ("mean_b", "median_b", "var_b"))
    assert_columns(no_bias, brute_force([mlp[0].weight, mlp[2].weight, mlp[3].weight]))


def test_include_adds_embeddings_norms_and_raw_parameters_by_shape():
    torch.manual_seed(8)
    lm = TinyLM()
    matrices, weights, biases = _layer_parts(lm.layer)
    got = module_metrics(lm, include=["embed.weight", "norm.*", "pos"])
    # the embedding and the raw 2-D parameter become matrices; the norm's scale joins w_all, its bias b_all
    want = brute_force(matrices + [lm.head.weight, lm.embed.weight, lm.pos],
                       weights=weights + [lm.head.weight, lm.embed.weight, lm.pos, lm.norm.weight],
                       biases=biases + [lm.head.bias, lm.norm.bias])
    assert_columns(got, want)


def test_exclude_wins_over_include():
    lm = TinyLM()
    assert module_metrics(lm, include="embed.*", exclude="embed.*") == module_metrics(lm)


def test_a_raw_3d_parameter_included_is_a_stack_of_per_head_matrices():
    torch.manual_seed(9)

    class Ref(nn.Module):  # the reference's own layout: W_Q as (heads, d_head, d_model)
        def __init__(self):
            super().__init__()
            self.W_Q = nn.Parameter(torch.randn(4, 3, 12))
            self.mlp = nn.Linear(12, 6)

    m = Ref()
    want = brute_force(list(m.W_Q.detach()) + [m.mlp.weight], weights=[m.W_Q, m.mlp.weight], biases=[m.mlp.bias])
    assert_columns(module_metrics(m, include="W_*"), want)


def test_patterns_that_match_nothing_or_do_not_compile_are_one_line_errors():
    mlp = nn.Sequential(nn.Linear(3, 2))
    for kwargs, text in (({"include": "encoder.*"}, "include pattern 'encoder.*' matches no tensor"),
                         ({"exclude": "re:["}, "not a valid regular expression"),
                         ({"exclude": [3]}, "must be non-empty strings")):
        with pytest.raises(UserError, match=re.escape(text)) as info:
            module_metrics(mlp, **kwargs)
        assert "\n" not in str(info.value)


def test_a_model_with_nothing_that_counts_is_refused():
    with pytest.raises(UserError, match="no weight matrix or conv kernel"):
        select_module(nn.Sequential(nn.Embedding(4, 3), nn.LayerNorm(3)))
    with pytest.raises(UserError, match="no weight matrix"):
        select_module(nn.Sequential(nn.Linear(3, 2)), exclude="*.weight")


def test_uninitialised_lazy_layers_are_refused():
    with pytest.raises(UserError, match="forward pass"):
        select_module(nn.Sequential(nn.LazyLinear(3)))


# --------------------------------------------------------------------------- state dict == module


def _models():
    torch.manual_seed(10)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten(),
                         nn.Linear(8, 3))
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 2, enable_nested_tensor=False)
    return {"mlp": (nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)), None), "conv": (conv, None),
            "lm": (TinyLM(), 2), "tied": (TinyLM(tied=True), 2), "encoder": (enc, 2), "lstm": (nn.LSTM(3, 4), None)}


@pytest.mark.parametrize("name", ["mlp", "conv", "lm", "tied", "encoder", "lstm"])
def test_state_dict_path_equals_module_path(name):
    model, heads = _models()[name]
    sd = model.state_dict()
    assert select_state_dict(sd, heads=heads).entries == select_module(model).entries
    assert state_dict_metrics(sd, heads=heads) == module_metrics(model)
    # a copy shares nothing with the model: ties must then be seen by name alone
    copy = {k: v.clone() for k, v in sd.items()}
    if name != "tied":
        assert state_dict_metrics(copy, heads=heads) == module_metrics(model)


def test_state_dict_without_heads_keeps_q_k_v_whole():
    torch.manual_seed(11)
    mha = nn.MultiheadAttention(8, 2)
    w = mha.in_proj_weight.detach()
    want = brute_force([w[:8], w[8:16], w[16:], mha.out_proj.weight], weights=[w, mha.out_proj.weight],
                       biases=[mha.in_proj_bias, mha.out_proj.bias])
    assert_columns(state_dict_metrics(mha.state_dict()), want)
    with pytest.raises(UserError, match="cannot split"):
        select_state_dict(mha.state_dict(), heads=3)


def test_state_dict_content_is_checked():
    with pytest.raises(UserError, match="not a plain state dict of tensors: entry 'a' is of type int"):
        select_state_dict({"a": 3})
    with pytest.raises(UserError, match="not a state dict"):
        select_state_dict([torch.zeros(2, 2)])
    with pytest.raises(UserError, match="empty"):
        select_state_dict({})


def test_describe_lists_every_counted_tensor():
    text = describe(select_module(TinyLM()))
    assert "matrix  layer.self_attn.in_proj_weight (6, 4, 8)" in text
    assert "embed" not in text and "norm" not in text


def test_hf_bert_follows_reference_b4():
    """HF BERT: per layer query, key, value (whole), attention output, intermediate and output
    dense are the matrices; embeddings and LayerNorms are excluded (reference B4). Our rule also
    counts the pooler, which the reference's classification model leaves aside."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(12)
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=16)
    bert = BertModel(cfg)
    matrices, biases = [], []
    for layer in bert.encoder.layer:
        att = layer.attention
        for lin in (att.self.query, att.self.key, att.self.value, att.output.dense, layer.intermediate.dense,
                    layer.output.dense):
            matrices.append(lin.weight)
            biases.append(lin.bias)
    matrices.append(bert.pooler.dense.weight)
    biases.append(bert.pooler.dense.bias)
    want = brute_force(matrices, biases=biases)
    assert_columns(module_metrics(bert), want)
    assert_columns(state_dict_metrics(bert.state_dict()), want)


def test_gpt2_fused_c_attn_counts_as_whole_q_k_v_as_bert():
    """GPT-2 stores its attention input as one Conv1D ``d × 3d`` (in × out): the rules cut it into
    Q, K and V, whole ``d × d`` matrices like BERT's separate Linears, on both paths."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=40, n_positions=8, n_embd=12, n_layer=2, n_head=3,
                                  n_inner=20)
    model = transformers.GPT2LMHeadModel(cfg)
    d = cfg.n_embd
    matrices, biases = [], []
    for block in model.transformer.h:
        w = block.attn.c_attn.weight.detach()  # (d, 3d): x @ w, outputs Q | K | V
        assert w.shape == (d, 3 * d)
        matrices += [w[:, :d], w[:, d:2 * d], w[:, 2 * d:]]  # singular values ignore the orientation
        matrices += [block.attn.c_proj.weight, block.mlp.c_fc.weight, block.mlp.c_proj.weight]
        biases += [block.attn.c_attn.bias, block.attn.c_proj.bias, block.mlp.c_fc.bias, block.mlp.c_proj.bias]
    # embeddings (wte, wpe), the LayerNorms and the LM head tied to wte do not count
    want = brute_force(matrices, biases=biases)
    assert_columns(module_metrics(model), want)
    assert_columns(state_dict_metrics(model.state_dict()), want)
    # one fused matrix would have been another answer: the split is what makes these equal
    fused = brute_force([m for i, m in enumerate(matrices) if i % 6 >= 3]
                        + [b.attn.c_attn.weight for b in model.transformer.h], biases=biases)
    assert module_metrics(model)["spectral"] != pytest.approx(fused["spectral"], rel=1e-6)
    assert "(transposed)" in describe(select_module(model))
