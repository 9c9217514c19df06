"""Data: loading train/test splits and partitioning them over clients."""

from .demo import LABEL_NAMES as DEMO_LABEL_NAMES
from .demo import make_demo_dataset, make_demo_splits
from .partition import (
    PathologicalDirichletPartitioner,
    ShuffledIidPartitioner,
    make_partitioner,
    partition_dataset,
    partition_stats,
)
from .sources import Splits, carve, load_splits

__all__ = [
    "DEMO_LABEL_NAMES",
    "PathologicalDirichletPartitioner",
    "ShuffledIidPartitioner",
    "Splits",
    "carve",
    "load_splits",
    "make_demo_dataset",
    "make_demo_splits",
    "make_partitioner",
    "partition_dataset",
    "partition_stats",
]
