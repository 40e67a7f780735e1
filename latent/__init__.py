"""latent: latent state models of training dynamics.

The core package: the run store, features, HMM fitting, the training map and the detour
regression, plus the ``latent`` command line. It never imports torch; the collector lives in
the ``collect`` package and the figures and HTML report in ``reports``.
"""

__version__ = "0.1.0"
