"""Matrix Fisher head pose method (Mohlin et al., NeurIPS 2020): the tutorial's method.

Layout as in ``hpelib/methods/<name>/``: ``loss.py`` (pure functions), ``model.py`` (a plain
``nn.Module``), ``module.py`` (the :class:`~hpelib.methods.HPEModule` subclass).
"""

from matrix_fisher.loss import log_normalizer, matrix_fisher_nll, proper_svd
from matrix_fisher.model import MatrixFisherNet
from matrix_fisher.module import MatrixFisher

__all__ = ["MatrixFisher", "MatrixFisherNet", "log_normalizer", "matrix_fisher_nll", "proper_svd"]
