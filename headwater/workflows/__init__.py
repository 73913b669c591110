"""Workflows compose methods into runs: cached stages, encoding and attribution of a store, the
demo, the experiment and its report, the real-model loop, and the tables they print."""
