"""Masked LM: the batched BERT against torch's own post-LN TransformerEncoderLayer per seed, the
80/10/10 masking, metrics on fixed weights by hand, the schedule, batch-vs-alone, resume, and
tiny studies end to end (bundled pydoc text and a *.txt directory)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from latent.collect.data.text import CLS, MASK, SEP, SPECIALS, WordTokenizer
from latent.collect.metrics import reference_metrics
from latent.collect.seeds import RunSeeds
from latent.collect.study import collect_study
from latent.collect.tasks import get_task
from latent.collect.tasks.mlm import PRESETS, MlmConfig, MlmData, MlmProblem, load_data, mask_tokens, mlm_loss_acc
from latent.cli import main
from latent.errors import UserError
from latent.store import Study
from task_checks import assert_mid_epoch_resume_exact

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


TINY = dict(vocab_size=30, seq_len=8, d_model=8, n_layers=2, n_heads=2, d_ff=16, batch_size=4, n_val=6,
            train_eval_size=5, warmup_steps=2)


def _data(n=20, n_val=6, seq_len=8, vocab=30, seed=0):
    rng = np.random.default_rng(seed)
    seqs = rng.integers(len(SPECIALS), vocab, (n + n_val, seq_len))
    seqs[:, 0], seqs[:, -1] = CLS, SEP
    tok = WordTokenizer(SPECIALS + tuple(f"w{i}" for i in range(vocab - len(SPECIALS))))
    return MlmData(seqs[:n], seqs[n:], tok, "test", "test", n * seq_len, 0.0)


def _problem(cfg, seeds, data=None):
    return MlmProblem(cfg, [RunSeeds.derive(s) for s in seeds], torch.device("cpu"), data=data or _data())


def plain_bert(pr, i):
    """Seed i as torch's own post-LN encoder layers (norm_first=False, GELU) plus a BERT MLM head."""
    cfg, P = pr.cfg, {k: v.detach()[i] for k, v in pr.params.items()}
    layers = []
    with torch.no_grad():
        for l in range(cfg.n_layers):
            layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, dropout=0.0, activation="gelu",
                                               layer_norm_eps=1e-12, batch_first=True, norm_first=False)
            layer.self_attn.in_proj_weight.copy_(torch.cat([P[f"l{l}_q"], P[f"l{l}_k"], P[f"l{l}_v"]]))
            layer.self_attn.in_proj_bias.copy_(torch.cat([P[f"l{l}_q_b"][0], P[f"l{l}_k_b"][0], P[f"l{l}_v_b"][0]]))
            layer.self_attn.out_proj.weight.copy_(P[f"l{l}_o"]); layer.self_attn.out_proj.bias.copy_(P[f"l{l}_o_b"][0])
            layer.linear1.weight.copy_(P[f"l{l}_in"]); layer.linear1.bias.copy_(P[f"l{l}_in_b"][0])
            layer.linear2.weight.copy_(P[f"l{l}_out"]); layer.linear2.bias.copy_(P[f"l{l}_out_b"][0])
            for j in (1, 2):
                getattr(layer, f"norm{j}").weight.copy_(P[f"l{l}_ln{j}_w"][0])
                getattr(layer, f"norm{j}").bias.copy_(P[f"l{l}_ln{j}_b"][0])
            layers.append(layer.eval())

    def logits(ids):
        x = P["tok_emb"][ids] + P["pos_emb"][: ids.shape[1]]
        x = nn.functional.layer_norm(x, (cfg.d_model,), P["emb_ln_w"][0], P["emb_ln_b"][0], eps=1e-12)
        for layer in layers:
            x = layer(x)
        t = nn.functional.gelu(x @ P["head"].T + P["head_b"][0])
        t = nn.functional.layer_norm(t, (cfg.d_model,), P["head_ln_w"][0], P["head_ln_b"][0], eps=1e-12)
        return t @ P["tok_emb"].T + P["dec_b"][0]

    return logits


def test_batched_model_matches_torch_encoder_layers():
    cfg = MlmConfig(**TINY)
    pr = _problem(cfg, [0, 1, 2])
    with torch.no_grad():  # non-zero biases and LN affine parameters so they matter
        for k, v in pr.params.items():
            if k.endswith("_b") or k.endswith("_w"):
                v.add_(0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(len(k))))
    loss, acc = pr.evaluate("val")
    inputs, ids, select = pr.eval_sets["val"]
    for i in range(3):
        with torch.no_grad():
            logits = plain_bert(pr, i)(inputs)
        ref = nn.functional.cross_entropy(logits[select], ids[select])
        assert float(loss[i]) == pytest.approx(float(ref), rel=1e-5)
        assert float(acc[i]) == pytest.approx(float((logits[select].argmax(-1) == ids[select]).float().mean()))


def test_masking_is_80_10_10_and_never_touches_cls_sep():
    ids = torch.full((400, 50), 7)
    ids[:, 0], ids[:, -1] = CLS, SEP
    inputs, select = mask_tokens(ids, 0.15, 1000, torch.Generator().manual_seed(0))
    assert not select[:, [0, -1]].any() and (inputs[:, 0] == CLS).all() and (inputs[:, -1] == SEP).all()
    n = int(select.sum())
    assert n / (400 * 48) == pytest.approx(0.15, abs=0.01)
    sel = inputs[select]
    assert (sel == MASK).sum() / n == pytest.approx(0.8, abs=0.02)
    randomised = (sel != MASK) & (sel != 7)
    assert randomised.sum() / n == pytest.approx(0.1 * 994 / 995, abs=0.015)  # a random word may equal the original
    assert (sel[randomised] >= len(SPECIALS)).all()
    assert (inputs[~select] == ids[~select]).all()
    again, sel2 = mask_tokens(ids, 0.15, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(again, inputs) and torch.equal(sel2, select)


def test_reference_metrics_on_fixed_weights_by_hand():
    cfg = MlmConfig(**{**TINY, "d_model": 4, "d_ff": 8, "n_layers": 1, "n_heads": 2})
    pr = _problem(cfg, [0])
    W_in = torch.zeros(8, 4)
    W_in[0, :2] = torch.tensor([3.0, 4.0])
    W_out = torch.zeros(4, 8)
    W_out[0, 0] = W_out[1, 1] = 1.0
    mats = {"l0_k": 2 * torch.eye(4), "l0_q": torch.diag(torch.tensor([1.0, -2, 0, 0])), "l0_v": torch.ones(4, 4),
            "l0_o": torch.eye(4), "l0_in": W_in, "l0_out": W_out}
    with torch.no_grad():
        for k, v in pr.params.items():  # excluded: embeddings, LayerNorms, attention biases, MLM head
            v.fill_(1e3)
        for k, v in mats.items():
            pr.params[k].copy_(v[None])
        pr.params["l0_in_b"].copy_(torch.arange(8.0)[None, None])
        pr.params["l0_out_b"].copy_(torch.tensor([[[-1.0, 0, 5, 2]]]))
    m = {k: float(v[0]) for k, v in reference_metrics(pr.weight_groups()).items()}
    #            K      Q            V     O     W_in   W_out
    l1 = [8, 3, 16, 4, 7, 2]
    l2 = [4, math.sqrt(5), 4, 2, 5, math.sqrt(2)]
    trace = [8, -1, 4, 4, 3, 2]
    spectral = [2, 2, 4, 1, 5, 1]
    mean_sv = [2, 0.75, 1, 1, 1.25, 0.5]
    var_sv = [0, 2.75 / 3, 12 / 3, 0, 18.75 / 3, 1 / 3]
    assert m["l1"] == pytest.approx(np.mean(l1))
    assert m["l2"] == pytest.approx(np.mean(l2))
    assert m["trace"] == pytest.approx(np.mean(trace))
    assert m["spectral"] == pytest.approx(np.mean(spectral))
    assert m["code_sparsity"] == pytest.approx(np.mean(np.divide(l1, l2)))
    assert m["computational_sparsity"] == pytest.approx(np.mean(np.divide(trace, spectral)))
    assert m["mean_lambda"] == pytest.approx(np.mean(mean_sv))
    assert m["variance_lambda"] == pytest.approx(np.mean(var_sv))
    w = np.concatenate([v.numpy().ravel() for v in mats.values()])
    assert (m["mean_w"], m["median_w"], m["var_w"]) == pytest.approx((w.mean(), np.sort(w)[(len(w) - 1) // 2], w.var(ddof=1)))
    b = np.concatenate([np.arange(8.0), [-1, 0, 5, 2]])
    assert (m["mean_b"], m["median_b"], m["var_b"]) == pytest.approx((b.mean(), 2.0, b.var(ddof=1)))


def test_learning_rate_warms_up_then_decays_linearly():
    pr = _problem(MlmConfig(**{**TINY, "warmup_steps": 4, "epochs": 2}), [0])  # 20 rows / 4 = 5 steps/epoch
    assert pr.total_steps == 10
    assert [pr.lr_at(t) / 1e-3 for t in range(10)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    flat = _problem(MlmConfig(**{**TINY, "warmup_steps": 4, "decay": False}), [0])
    assert flat.lr_at(9) == 1e-3
    pr.train_step()
    assert pr.optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-3)


def test_mid_epoch_resume_continues_exactly():
    cfg = MlmConfig(**{**TINY, "epochs": 2})
    def check_step(p):
        assert p._step == 3

    assert_mid_epoch_resume_exact(lambda: _problem(cfg, [0, 1]), 3, 4, after_load=check_step)


def test_head_only_at_selected_positions_equals_full_logits():
    cfg = MlmConfig(**TINY)
    pr = _problem(cfg, [0, 1])
    ids = pr.train_ids[:4][None].expand(2, -1, -1)
    select = torch.zeros_like(ids, dtype=torch.bool)
    select[0, 0, 1], select[0, 2, 3], select[1, 1, 2] = True, True, True  # 2 and 1 selected: padding in seed 1
    with torch.no_grad():
        loss, correct, counts = mlm_loss_acc(pr.params, ids, ids, select, cfg)
    assert counts.tolist() == [2, 1]
    for i in range(2):
        with torch.no_grad():
            logits = plain_bert(pr, i)(ids[i])
        ref = nn.functional.cross_entropy(logits[select[i]], ids[i][select[i]], reduction="sum")
        assert float(loss[i]) == pytest.approx(float(ref), rel=1e-5)


def _collect(store, seeds, overrides, **kw):
    return collect_study("mlm", seeds, overrides=list(overrides), store=store, threads=1, progress=False, **kw)


SMALL = ["vocab_size=200", "seq_len=16", "d_model=16", "n_heads=2", "d_ff=32", "n_val=16", "n_train=48",
         "train_eval_size=8", "batch_size=16", "epochs=2", "log_every=2", "warmup_steps=2"]


def test_seed_trained_alone_equals_seed_in_batch(tmp_path):
    _collect(tmp_path / "batch", 3, SMALL)
    _collect(tmp_path / "alone", "1-1", SMALL)
    batched = Study(tmp_path / "batch" / "mlm").read_run(1)
    alone = Study(tmp_path / "alone" / "mlm").read_run(1)
    assert list(batched.columns) == list(alone.columns)
    assert batched["step"].tolist() == [0, 2, 4, 6]  # 48 sequences / 16 = 3 steps per epoch
    np.testing.assert_allclose(alone.to_numpy(float), batched.to_numpy(float), rtol=1e-5, atol=1e-7)
    assert not np.allclose(Study(tmp_path / "batch" / "mlm").read_run(0)["l2"], batched["l2"])


def test_pydoc_study_is_recorded_and_fit_ready(tmp_path):
    _collect(tmp_path, 2, SMALL)
    study = Study(tmp_path / "mlm")
    meta = study.read_meta()
    assert meta["task"] == "mlm" and meta["step_unit"] == "step"
    assert meta["convergence"] == {"metric": "val_loss", "threshold": 4.85, "direction": "below"}
    assert meta["data"]["source"] == "pydoc" and "pydoc_data.topics" in meta["data"]["description"]
    assert (meta["data"]["n_train"], meta["data"]["n_val"]) == (48, 16) and meta["data"]["tokens"] > 100_000
    assert "200 entries" in meta["data"]["tokenizer"]
    frame = study.read_run(0)
    assert frame[meta["features"] + ["val_loss", "train_loss", "val_acc", "train_acc"]].notna().all().all()
    assert frame["val_loss"].iloc[0] == pytest.approx(math.log(200), abs=0.3)  # near-uniform at init


def test_fit_accepts_the_study(tmp_path):
    pytest.importorskip("latent.cli.fit")
    _collect(tmp_path, 5, SMALL[:-3] + ["epochs=5", "log_every=1", "warmup_steps=2", "threshold=5.2"])
    rc = main(["fit", "--store", str(tmp_path), "--study", "mlm", "--max-states", "2", "--restarts", "1",
               "--n-boot", "10", "--jobs", "1", "--quiet", "--test-fraction", "0.2"])
    assert rc == 0 and any((tmp_path / "mlm" / "fits").iterdir())


def test_text_directory_study_end_to_end(tmp_path, capsys):
    d = tmp_path / "corpus"
    d.mkdir()
    rng = np.random.default_rng(0)
    words = [a + b for a in "abcde" for b in "fghijklm"]  # 40 letter-only words (digits would split off)
    (d / "a.txt").write_text(" ".join(rng.choice(words, 600)) + ".", encoding="utf-8")
    (d / "b.txt").write_text(" ".join(rng.choice(words, 300)), encoding="utf-8")
    args = ["collect", "--task", "mlm", "--seeds", "2", "--data-dir", str(d), "--store", str(tmp_path / "store"),
            "--no-progress", "--threads", "1", *sum((["--set", s] for s in SMALL if not s.startswith("n_train")), [])]
    assert main(args) == 0
    meta = Study(tmp_path / "store" / "mlm").read_meta()
    assert meta["data"]["source"] == "files" and meta["data"]["tokens"] == 901
    assert "2 *.txt file(s)" in meta["data"]["description"] and (meta["data"]["n_train"], meta["data"]["n_val"]) == (48, 16)
    data = load_data(MlmConfig(data_dir=str(d), vocab_size=200, seq_len=16, n_val=16))
    # The vocabulary is every token of the training sequences (fewer than vocab_size) and nothing else.
    assert data.unk_rate == 0 and set(words) >= set(data.tokenizer.itos[5:])
    assert len(data.tokenizer.itos) == 5 + len(np.unique(data.train[:, 1:-1]))
    # A binary file in the corpus: one line, nothing written.
    (d / "c.txt").write_bytes(b"\x00\x01binary")
    args[args.index("--store") + 1] = str(tmp_path / "store2")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "c.txt contains NUL bytes" in err and "\n" not in err
    assert not (tmp_path / "store2" / "mlm").exists()


def test_presets_and_validation(tmp_path):
    task = get_task("mlm")
    paper = MlmConfig(**PRESETS["paper"])
    assert (paper.n_layers, paper.d_model, paper.n_heads, paper.d_ff, paper.seq_len) == (12, 768, 12, 3072, 512)
    assert (paper.lr, paper.weight_decay, paper.warmup_steps, paper.batch_size) == (1e-4, 0.01, 10000, 256)
    assert task.step_unit == "step" and task.convergence(MlmConfig()).direction == "below"
    with pytest.raises(UserError, match="--data-dir"):
        collect_study("mlm", 1, preset="paper", store=tmp_path, progress=False)
    with pytest.raises(UserError, match="multiple of n_heads"):
        MlmConfig(d_model=10, n_heads=4).validate()
    with pytest.raises(UserError, match="mask_prob must be in"):
        MlmConfig(mask_prob=0).validate()
    with pytest.raises(UserError, match="does not apply to source='pydoc'"):
        MlmConfig(source="pydoc", data_dir="/x").validate()
    with pytest.raises(UserError, match="leaves none for training"):
        load_data(MlmConfig(n_val=100_000))


def test_weight_decay_spares_biases_and_layernorm_gains_as_in_bert():
    # AdamW's decay is decoupled: after one step from the same weights and gradients, a decayed
    # parameter differs from its undecayed twin by exactly -lr·wd·p0; biases and LN gains not at all.
    wd = 0.5
    runs = {w: _problem(MlmConfig(**{**TINY, "weight_decay": w}), [0, 1]) for w in (0.0, wd)}
    gen = torch.Generator().manual_seed(0)
    p0 = {k: torch.randn(v.shape, generator=gen) for k, v in runs[wd].params.items()}  # biases non-zero too
    with torch.no_grad():
        for pr in runs.values():
            for k, v in pr.params.items():
                v.copy_(p0[k])
    lr = runs[wd].lr_at(0)
    for pr in runs.values():
        pr.train_step()
    for name, before in p0.items():
        gap = runs[wd].params[name].detach() - runs[0.0].params[name].detach()
        bias_or_gain = name.endswith("_b") or name in ("emb_ln_w", "head_ln_w") or "_ln" in name
        want = torch.zeros_like(before) if bias_or_gain else -lr * wd * before
        torch.testing.assert_close(gap, want, rtol=0, atol=2e-6, msg=name)  # float32 rounding of p ~ 1
    assert {"tok_emb", "pos_emb", "l0_q", "l1_out", "head"} <= {k for k in p0 if not (k.endswith("_b") or "ln" in k)}
