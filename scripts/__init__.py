"""Command-line entry points, run from the pack's root as ``python -m scripts.<name>``."""
