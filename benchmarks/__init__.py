"""The benchmark scripts; run each from the repository root as a module: ``python -m benchmarks.NAME``.

What they share (timing, markdown tables, peer imports, training runs) is in :mod:`benchmarks.common`.
"""
