"""The DQE model: preprocessing contract, numpy preprocessing, weights registry, network and ONNX export.

Importing this package never imports torch; :mod:`dqe.models.network`, :mod:`dqe.models.weights` and
:mod:`dqe.models.export` do, and are only used by export and training.
"""

from dqe.models.contract import CONTRACT_V1, PreprocessingContract

__all__ = ["CONTRACT_V1", "PreprocessingContract"]
