"""Run directories: atomic files, metrics, checkpoints, resume."""
