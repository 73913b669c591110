"""headwater.engine: the compute core. Models, tokenisation, capture of residual-stream vectors,
the vector store and search.

The engine knows models and datasets; it never imports the methods or the CLI in ``headwater``.
"""
from headwater.engine.engine import Engine, SearchResult
from headwater.engine.store import VectorStore

__all__ = ["Engine", "SearchResult", "VectorStore"]
