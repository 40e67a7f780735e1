"""``python -m latent`` is the same as the ``latent`` command."""

import sys

from .cli import main

sys.exit(main())
