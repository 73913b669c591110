"""headwater.engine: the compute core. Models, tokenisation, capture of residual-stream vectors.

The engine knows models and datasets; it never imports the methods or the CLI in ``headwater``.
"""
