"""One colour-blind-safe colour per HMM state, the same in every figure.

States 0..6 take the Okabe–Ito palette (without its black, which we keep for outlines and
marks); states 7..16 continue with Paul Tol's "muted" palette. Both were designed to stay
distinguishable under the common forms of colour-vision deficiency. Beyond 17 states the
colours repeat (the state number is always printed beside the colour, so nothing is lost).
"""

from __future__ import annotations

OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#56B4E9",  # sky blue
    "#CC79A7",  # reddish purple
    "#F0E442",  # yellow
)
TOL_MUTED = (
    "#332288",  # indigo
    "#88CCEE",  # cyan
    "#44AA99",  # teal
    "#117733",  # green
    "#999933",  # olive
    "#DDCC77",  # sand
    "#CC6677",  # rose
    "#882255",  # wine
    "#AA4499",  # purple
    "#DDDDDD",  # pale grey
)
STATE_COLORS = OKABE_ITO + TOL_MUTED

#: Colour for checkpoints that have no decoded state (beyond the fit's ``first_n``).
UNDECODED = "#BBBBBB"
#: Outline colour for detour states and marks (convergence, zero lines).
MARK = "#000000"
#: Diverging colour map for z-scored values (purple–orange is colour-blind safe).
DIVERGING_CMAP = "PuOr_r"


def state_color(state: int) -> str:
    """Hex colour of canonical state ``state``."""
    return STATE_COLORS[int(state) % len(STATE_COLORS)]


def state_colors(n_states: int) -> list[str]:
    """Hex colours of states ``0..n_states-1``."""
    return [state_color(k) for k in range(int(n_states))]


def state_rgba(n_states: int):
    """An ``(n_states + 1, 4)`` RGBA array; row ``n_states`` is :data:`UNDECODED`.

    Index it with a state array in which undecoded checkpoints are ``n_states`` (or ``-1``,
    which numpy also maps to the last row).
    """
    import numpy as np
    from matplotlib.colors import to_rgba

    return np.array([to_rgba(c) for c in state_colors(n_states)] + [to_rgba(UNDECODED)])
