"""fedhello's benchmark suite: ``fedhello bench --out DIR [--quick]``.

Every figure is a ratio of two things measured side by side in one run, with
the A/B measurements interleaved (so that load from other processes cancels)
and the median taken. See BENCHMARKS.md at the repository root.

Modules: :mod:`.settings` (parts, sizes; no torch), :mod:`.common` (configs,
timing, memory), :mod:`.suite` (the measurements), :mod:`.probe` (the fresh
process some measurements need), :mod:`.report` (the tables), :mod:`.run`
(the whole suite, and its result files).
"""
