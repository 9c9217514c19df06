"""Results people look at: sweeps over (strategy, partition, seed), the results
table, plots, TensorBoard scalars and the exported PEFT adapter.

- :mod:`fedhello.report.sweep`: ``fedhello sweep`` (the grid, resumable) and the
  results table (``results.csv`` / ``results.md``) computed from the cells' run
  directories alone.
- :mod:`fedhello.report.plots`: PNG plots of a run directory and of a sweep.
- :mod:`fedhello.report.tensorboard`: TensorBoard scalars written from the records.
- :mod:`fedhello.report.export`: the final global adapter in PEFT format, and
  ``fedhello predict``.
- :mod:`fedhello.report.hooks`: what a run writes after every round and at its end.
"""
