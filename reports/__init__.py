"""Figures and the HTML report, drawn from a saved fit's artifacts (never refits or retrains).

Notebook API::

    from latent.reports import load_fit, figures
    fit = load_fit(store="data")            # most recent study, most recent fit
    figures.plot_training_map(ax, fit)      # every figure: plot_*(ax, fit, ...) -> dict

``write_report(fit)`` writes ``<study>/reports/<fit-id>/index.html`` plus PNG/SVG figures.
"""

from . import figures, palette
from .artifacts import FitArtifacts, load_fit
from .html import write_report

__all__ = ["FitArtifacts", "figures", "load_fit", "palette", "write_report"]
