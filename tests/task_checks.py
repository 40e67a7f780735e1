"""Checks every seed-batched task must pass, shared by the per-task test modules."""

import torch


def assert_mid_epoch_resume_exact(make_problem, steps_before, steps_after, after_load=None, extra=None):
    """Save after ``steps_before`` steps, resume in a fresh problem, train ``steps_after`` more:
    the parameters (and ``extra(problem)`` tensors, e.g. BN statistics) must equal an
    uninterrupted run's exactly. Returns the saved per-seed states."""
    ref = make_problem()
    for _ in range(steps_before + steps_after):
        ref.train_step()
    first = make_problem()
    for _ in range(steps_before):
        first.train_step()
    states = [first.seed_state(i) for i in range(first.n_seeds)]
    resumed = make_problem()
    resumed.load_seed_states(states)
    if after_load is not None:
        after_load(resumed)
    for _ in range(steps_after):
        resumed.train_step()
    for k in ref.params:
        torch.testing.assert_close(resumed.params[k], ref.params[k], rtol=0, atol=0)
    if extra is not None:
        for key, value in extra(ref).items():
            torch.testing.assert_close(extra(resumed)[key], value, rtol=0, atol=0)
    return states


def peak_bytes(fn) -> int:
    """Peak traced allocation while ``fn`` runs (numpy and pickle buffers included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak
