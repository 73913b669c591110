"""Baselines activation attribution must beat, with the same interfaces: rankings of pairs."""
