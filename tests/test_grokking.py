"""The default modadd preset really groks: memorise first, generalise hundreds of epochs later."""

import pytest

from latent.collect.study import collect_study
from latent.store import Study


@pytest.mark.slow
def test_default_preset_groks_with_a_delay(tmp_path):
    # Seeds 0-3 of the exact default preset (2,000 epochs, full batch), as `latent collect` runs it.
    collect_study("modadd", 4, store=tmp_path, progress=False)
    study = Study(tmp_path / "modadd")
    first = {}
    for seed in range(4):
        frame = study.read_run(seed)
        steps = frame["step"].to_numpy()

        def first_epoch(col, thr):
            hit = frame[col].to_numpy() >= thr
            assert hit.any(), f"seed {seed}: {col} never reaches {thr}"
            return int(steps[hit.argmax()])

        memorised, generalised, grokked = first_epoch("train_acc", 0.99), first_epoch("val_acc", 0.9), first_epoch("val_acc", 0.99)
        assert generalised - memorised >= 300, (seed, memorised, generalised)
        assert frame["val_acc"].iloc[-1] >= 0.99
        # Before the grok, validation accuracy sits far below training accuracy.
        mid = frame[(frame["step"] > memorised) & (frame["step"] < memorised + 200)]
        assert (mid["val_acc"] < 0.5).all() and (mid["train_acc"] > 0.98).all()
        first[seed] = grokked
    assert len(set(first.values())) > 1  # seeds differ
