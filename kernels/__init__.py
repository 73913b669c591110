"""headwater.kernels: tensor operations with a torch reference and faster backends.

Kernels know tensors and nothing else: no models, no datasets.
"""
from headwater.kernels.pooling import EmptyMaskError, masked_mean_pool

__all__ = ["EmptyMaskError", "masked_mean_pool"]
