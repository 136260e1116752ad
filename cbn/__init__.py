"""cbn: k-layer fully connected networks with batch normalization, trained with mini-batch
SGD, cyclical learning rates and L2 regularization, on Cython kernels over BLAS.

Main entry points: ``Network``, ``CyclicLR``, ``fit``, ``gradcheck`` and ``cbn.data.load_cifar10``.
"""
from . import data, kernels
from .gradcheck import GradcheckResult, gradcheck
from .network import Network
from .schedule import ConstantLR, CyclicLR
from .train import DivergenceError, History, fit

__version__ = "0.1.0"

__all__ = [
    "data", "kernels", "Network", "CyclicLR", "ConstantLR", "fit", "History", "DivergenceError",
    "gradcheck", "GradcheckResult", "__version__",
]
