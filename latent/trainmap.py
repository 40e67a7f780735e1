"""The training map: a networkx DiGraph of states and the transitions runs' Viterbi paths take.

Nodes are canonical states; edges j → k (j ≠ k) exist only for transitions that at least one
run's Viterbi path takes (reference.md D, "pruning"); self-transitions are stored on the node
(``self_prob``, ``self_runs``). Attribute names follow docs/artifacts.md (``analysis.json`` ``map``).
"""

from __future__ import annotations

import networkx as nx
import numpy as np


def observed_transitions(paths) -> dict[tuple[int, int], set[int]]:
    """``{(j, k): {run positions taking j → k}}`` over consecutive pairs, self-pairs included."""
    out: dict[tuple[int, int], set[int]] = {}
    for i, path in enumerate(paths):
        path = np.asarray(path)
        for j, k in set(zip(path[:-1].tolist(), path[1:].tolist())):
            out.setdefault((j, k), set()).add(i)
    return out


def build_map(
    paths,
    raw_runs,
    params: dict,
    features: list[str],
    convergence: list,
    importance: list[dict] | None = None,
    top: int = 3,
) -> nx.DiGraph:
    """Build the training map.

    Parameters
    ----------
    paths : list of ndarray (T_i,)
        Viterbi paths per run (canonical states).
    raw_runs : list of ndarray (T_i, d)
        Features per run in original units.
    params : dict
        ``transmat`` (K, K) and ``means`` (K, d) in z units.
    features : list of str
    convergence : list
        Convergence step per run (None when it never converged).
    importance : list of dict, optional
        Output of :func:`latent.importance.transition_importance`; gives ``top_features``.
    top : int
        Features annotated per edge.
    """
    transmat = np.asarray(params["transmat"])
    means_z = np.asarray(params["means"])
    K = transmat.shape[0]
    all_states = np.concatenate(paths)
    all_raw = np.concatenate(raw_runs)
    n_total = len(all_states)
    trans = observed_transitions(paths)
    imp = {(e["source"], e["target"]): e for e in (importance or [])}
    G = nx.DiGraph()
    for k in range(K):
        mask = all_states == k
        mean_raw = all_raw[mask].mean(axis=0) if mask.any() else None
        G.add_node(
            k,
            state=k,
            occupancy=float(mask.sum() / n_total),
            n_runs=int(sum(1 for p in paths if np.any(np.asarray(p) == k))),
            mean={f: (float(mean_raw[i]) if mean_raw is not None else None) for i, f in enumerate(features)},
            mean_z={f: float(means_z[k, i]) for i, f in enumerate(features)},
            self_prob=float(transmat[k, k]),
            self_runs=len(trans.get((k, k), ())),
        )
    for (j, k), runs in sorted(trans.items()):
        if j == k:
            continue
        conv = [convergence[i] for i in sorted(runs) if convergence[i] is not None]
        e = imp.get((j, k))
        G.add_edge(
            j,
            k,
            runs=len(runs),
            prob=float(transmat[j, k]),
            convergence_mean=float(np.mean(conv)) if conv else None,
            convergence_std=float(np.std(conv)) if conv else None,
            top_features=e["features"][:top] if e else [],
        )
    return G


def map_to_data(G: nx.DiGraph) -> dict:
    """Node-link data (``edges`` key) for ``analysis.json``."""
    return nx.node_link_data(G, edges="edges")


def map_from_data(data: dict) -> nx.DiGraph:
    """The inverse of :func:`map_to_data`."""
    return nx.node_link_graph(data, directed=True, edges="edges")
