"""headwater.kernels: tensor operations with a torch reference and faster backends.

Kernels know tensors and nothing else: no models, no datasets. Each public function takes a
``backend`` argument (``"auto"``, ``"triton"``, ``"cpp"``, ``"torch"``; see ``_dispatch``).
"""
from headwater.kernels.pooling import EmptyMaskError, masked_mean_pool, masked_mean_pool_diff
from headwater.kernels.prepared import PreparedBlock, PreparedKeys, prepare_keys, prepare_rows
from headwater.kernels.similarity import KeySource, cosine_similarity, cosine_similarity_blocks
from headwater.kernels.topk import cosine_topk, cosine_topk_reference

__all__ = [
    "EmptyMaskError",
    "KeySource",
    "PreparedBlock",
    "PreparedKeys",
    "cosine_similarity",
    "cosine_similarity_blocks",
    "cosine_topk",
    "cosine_topk_reference",
    "masked_mean_pool",
    "masked_mean_pool_diff",
    "prepare_keys",
    "prepare_rows",
]
