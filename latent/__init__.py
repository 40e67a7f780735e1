"""latent: latent state models of training dynamics.

One import namespace, three layers. The core (this folder): the run store, features, HMM
fitting, the training map and the detour regression; it never imports torch. Above it, from
folders of their own: the collector :mod:`latent.collect` (``collect/``, torch), the figures and
HTML report :mod:`latent.reports` (``reports/``), and the command line :mod:`latent.cli`.
"""

__version__ = "0.1.0"
