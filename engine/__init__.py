"""headwater.engine: the compute core. Models, tokenisation, capture of residual-stream vectors,
the vector store. Search over a store is ``headwater.kernels.cosine_topk(queries, store.blocks(), k)``.

The engine knows models and datasets; it never imports the methods or the CLI in ``headwater``.
"""
from headwater.engine.engine import Engine
from headwater.engine.store import VectorStore

__all__ = ["Engine", "VectorStore"]
