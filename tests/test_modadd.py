"""The batched modular-addition models against plain single-seed modules, and the metric groups."""

import dataclasses

import numpy as np
import pytest
import torch

from latent.collect.metrics import reference_metrics, matrix_metrics
from latent.collect.seeds import RunSeeds
from latent.collect.tasks.modadd import PRESETS, ModAddConfig, ModAddProblem, op_table, pair_table, split_indices

from reference_models import mlp_forward, transformer_forward


def _problem(cfg, seeds):
    return ModAddProblem(cfg, [RunSeeds.derive(s) for s in seeds], torch.device("cpu"))


def _one_seed(problem, i):
    return {k: v.detach()[i] for k, v in problem.params.items()}


def test_mlp_logits_match_plain_module():
    cfg = ModAddConfig(p=13, d_embed=8, d_hidden=16)
    pr = _problem(cfg, [0, 1, 2])
    rows = pr.train_idx
    batched = pr._logits(rows).detach()
    a, b, _ = pair_table(cfg.p)
    for i in range(3):
        ref = mlp_forward(_one_seed(pr, i), a[rows[i]], b[rows[i]], cfg.d_embed)
        torch.testing.assert_close(batched[i], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layernorm", [False, True])
def test_transformer_logits_match_full_attention(layernorm):
    cfg = ModAddConfig(model="transformer", p=11, d_model=16, n_heads=4, d_mlp=32, layernorm=layernorm,
                       init_scaling=1.5)
    pr = _problem(cfg, [3, 4])
    if layernorm:  # move LN parameters off their (1, 0) init so they matter
        with torch.no_grad():
            for k in ("ln1_w", "ln1_b", "ln2_w", "ln2_b"):
                pr.params[k].add_(0.3 * torch.randn(pr.params[k].shape, generator=torch.Generator().manual_seed(1)))
    rows = pr.val_idx
    batched = pr._logits(rows).detach()
    a, b, _ = pair_table(cfg.p)
    for i in range(2):
        ref = transformer_forward(_one_seed(pr, i), a[rows[i]], b[rows[i]], cfg.p, cfg.n_heads, layernorm)
        torch.testing.assert_close(batched[i], ref, rtol=1e-5, atol=1e-5)


def test_paper_transformer_has_fifteen_matrices_and_excludes_embeddings():
    cfg = dataclasses.replace(ModAddConfig(**PRESETS["paper"]))
    pr = _problem(cfg, [0])
    groups = pr.weight_groups()
    shapes = [tuple(g.shape[1:]) for g in groups.matrices]
    assert shapes == [(12, 32, 128), (1, 128, 128), (1, 512, 128), (1, 128, 512)]  # 4 heads x Q,K,V + 3
    n_weights = sum(w[0].numel() for w in groups.weights)
    assert n_weights == 3 * 128 * 128 + 128 * 128 + 2 * 512 * 128  # no W_E, W_pos, W_U
    assert sum(b[0].numel() for b in groups.biases) == 512 + 128
    # The per-head split changes l1's average: check the column against a hand loop over heads.
    P = _one_seed(pr, 0)
    mats = [P[n][h] for n in ("W_K", "W_Q", "W_V") for h in range(4)] + [P["W_O"], P["W_in"], P["W_out"]]
    expected_l1 = np.mean([float(matrix_metrics(m)["l1"]) for m in mats])
    assert float(reference_metrics(groups)["l1"][0]) == pytest.approx(expected_l1, rel=1e-9)


def test_splits_per_run_and_shared():
    cfg = ModAddConfig(p=13)
    a = split_indices(cfg.p, cfg.n_train, RunSeeds.derive(0).split)
    b = split_indices(cfg.p, cfg.n_train, RunSeeds.derive(1).split)
    assert len(a[0]) == cfg.n_train == int(0.5 * 169) and len(a[1]) == 169 - cfg.n_train
    assert not np.array_equal(a[0], b[0])  # the reference: each seed its own split
    assert set(a[0]).isdisjoint(a[1])
    shared = [split_indices(cfg.p, cfg.n_train, RunSeeds.derive(s, split_seed=7).split)[0] for s in (0, 1, 2)]
    assert all(np.array_equal(shared[0], x) for x in shared)
    assert RunSeeds.derive(0, split_seed=7).init != RunSeeds.derive(1, split_seed=7).init


def test_seed_streams_are_fixed_and_distinct():
    rs = RunSeeds.derive(5)
    assert rs == RunSeeds.derive(5)
    assert len({rs.init, rs.order, rs.split}) == 3
    assert RunSeeds.derive(5).init != RunSeeds.derive(6).init
    # Pinned values: changing how streams are derived changes every run (and every study already
    # collected stops resuming bit for bit), so it must be deliberate.
    assert RunSeeds.derive(0).as_dict() == {"seed": 0, "init": 8668861027912758289, "order": 4881901421217228719,
                                            "split": 7229315352737646089}
    assert RunSeeds.derive(5).as_dict() == {"seed": 5, "init": 6435503736417733320, "order": 6924645418555453511,
                                            "split": 1725439304048894018}
    shared = RunSeeds.derive(3, split_seed=7)
    assert (shared.init, shared.order, shared.split) == (5225985557982005424, 9220343133073777804,
                                                         RunSeeds.derive(7).split)
    assert rs.init == int(np.random.SeedSequence(5, spawn_key=(0,)).generate_state(1, dtype=np.uint64)[0] & np.uint64(2**63 - 1))


# --------------------------------------------------------------------------- the operation family


def test_every_operations_answers_by_hand():

    p = 7
    for op, f in (("add", lambda a, b: (a + b) % p), ("sub", lambda a, b: (a - b) % p), ("mul", lambda a, b: a * b % p)):
        a, b, y = pair_table(p, op)
        assert len(a) == p * p and all(int(y[i]) == f(int(a[i]), int(b[i])) for i in range(len(a)))
    a, b, y = pair_table(p, "div")
    assert len(a) == p * (p - 1) and (b != 0).all()
    assert all((int(y[i]) * int(b[i])) % p == int(a[i]) for i in range(len(a)))  # y·b = a
    a, b, op, y = op_table(p, ("add", "mul"))
    assert len(a) == 2 * p * p and (op[: p * p] == 0).all() and (op[p * p:] == 1).all()


def test_each_operation_is_split_on_its_own_and_add_alone_splits_as_before():
    from latent.collect.tasks.modadd import split_ops

    cfg = ModAddConfig(p=11, op="add,sub,div", train_frac=0.3)
    train, val = split_ops(cfg, RunSeeds.derive(2).split)
    sizes = [121, 121, 110]
    starts = np.cumsum([0] + sizes)
    for i, n in enumerate(sizes):
        t = train[(train >= starts[i]) & (train < starts[i + 1])]
        v = val[(val >= starts[i]) & (val < starts[i + 1])]
        assert len(t) == int(0.3 * n) and len(t) + len(v) == n and set(t).isdisjoint(v)
    assert cfg.n_train == len(train) and cfg.n_rows == sum(sizes)
    single = ModAddConfig(p=11, train_frac=0.3)
    np.testing.assert_array_equal(split_ops(single, 5)[0], split_indices(11, single.n_train, 5)[0])


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_several_operations_match_the_plain_modules(model):

    cfg = ModAddConfig(model=model, p=11, op="add,sub,mul", d_embed=6, d_hidden=16, d_model=16, n_heads=4, d_mlp=32)
    pr = _problem(cfg, [0, 1])
    rows = pr.val_idx
    batched = pr._logits(rows).detach()
    a, b, op, _ = op_table(cfg.p, cfg.ops)
    assert batched.shape[-1] == (11 if model == "mlp" else 11 + 3)
    for i in range(2):
        if model == "mlp":
            ref = mlp_forward(_one_seed(pr, i), a[rows[i]], b[rows[i]], cfg.d_embed, op[rows[i]])
        else:
            ref = transformer_forward(_one_seed(pr, i), a[rows[i]], b[rows[i]], cfg.p, cfg.n_heads, False, op[rows[i]])
        torch.testing.assert_close(batched[i], ref, rtol=1e-5, atol=1e-5)


def test_per_operation_metrics_are_each_operations_own_loss_and_accuracy():
    import torch.nn.functional as F


    cfg = ModAddConfig(p=11, op="add,mul", d_embed=6, d_hidden=16)
    pr = _problem(cfg, [0])
    for _ in range(20):
        pr.train_step()
    got = pr.op_metrics()
    a, b, op, y = op_table(cfg.p, cfg.ops)
    P = _one_seed(pr, 0)
    for split, idx in (("train", pr.train_idx[0]), ("val", pr.val_idx[0])):
        for i, name in enumerate(cfg.ops):
            rows = idx[op[idx] == i]
            logits = mlp_forward(P, a[rows], b[rows], cfg.d_embed, op[rows])
            assert got[f"{split}_loss_{name}"][0].item() == pytest.approx(F.cross_entropy(logits, y[rows]).item(), rel=1e-5)
            assert got[f"{split}_acc_{name}"][0].item() == pytest.approx((logits.argmax(1) == y[rows]).float().mean().item())
    with pytest.raises(Exception, match="prime"):
        ModAddConfig(p=12, op="mul").validate()


@pytest.mark.parametrize("overrides", [{}, {"model": "transformer", "d_model": 16, "d_mlp": 32, "batch_size": 40}])
def test_a_step_that_does_not_measure_trains_the_same_and_says_nothing_of_accuracy(overrides):
    """``train_step(measure=False)`` skips only the accuracy: the weights after it are the same to the bit
    as after a measuring step, its loss is the same, and its accuracy is NaN, never a made-up number;
    a measuring step's accuracy is the share of its batch argmax gets right (hand-computed)."""
    cfg = ModAddConfig(p=13, d_embed=8, d_hidden=16, **overrides)
    measuring, quiet = _problem(cfg, [0, 1]), _problem(cfg, [0, 1])
    for step in range(6):
        before = {k: v.detach().clone() for k, v in measuring.params.items()}
        rows = measuring.train_idx if measuring.full_batch else None
        loss_m, acc_m = measuring.train_step()
        loss_q, acc_q = quiet.train_step(measure=False)
        assert torch.equal(loss_m, loss_q)
        assert torch.isnan(acc_q).all()
        for k in measuring.params:
            assert torch.equal(measuring.params[k], quiet.params[k]), k
        if rows is not None and step == 0:
            a, b, _, y = op_table(cfg.p, cfg.ops)
            for i in range(2):
                logits = mlp_forward({k: v[i] for k, v in before.items()}, a[rows[i]], b[rows[i]], cfg.d_embed)
                assert acc_m[i].item() == pytest.approx((logits.argmax(1) == y[rows[i]]).float().mean().item())
