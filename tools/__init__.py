"""Developer tools run from the repository root: ``python -m tools.bench``, ``python -m tools.qnn_probe``."""
