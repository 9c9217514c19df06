"""fedhello's benchmark suite: ``python -m benchmarks.run --out DIR [--quick]``.

Every figure is a ratio of two things measured side by side in one run, with
the A/B measurements interleaved (so that load from other processes cancels)
and the median taken. See BENCHMARKS.md at the repository root.
"""
