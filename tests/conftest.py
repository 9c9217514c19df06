import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers import make_tiny_bert, torch_threads  # noqa: E402

BANKING77 = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "banking77").resolve()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (see ``helpers.torch_threads``)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def banking77() -> Path:
    if not (BANKING77 / "train.csv").is_file():
        pytest.skip("the Banking77 copy beside the repository (shared/data/banking77) is absent")
    return BANKING77


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), 3)


@pytest.fixture(scope="session")
def tiny_bert12(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert12"), 12)


def screen_and_aggregate(tasks, results, global_state, layermap, *, sample_counts=None, rule="layerwise",
                         weighting="samples", aggregation=None):
    """What the Server loop does with a round's collected Flower replies: its own merge step
    (``screen_and_merge``: screened, then merged with the aggregation rule named ``rule``).
    ``aggregation``: an ``aggregation`` config section, its bounds applied; by default none
    (the unbounded mean, or the rule's own merge: screening is under test). Returns (new
    global state, failed-client records, number of accepted updates)."""
    from fedhello.federation.server import AggregationSettings, screen_and_merge

    if aggregation is None:
        aggregation = AggregationSettings(weighting=weighting, norm_bound=0.0, robust="mean", trim=0.0,
                                          max_empty_rounds=1)
    merged = screen_and_merge(tasks, results, global_state, layermap, rule=rule, aggregation=aggregation,
                              ffa=False, head=True, sample_counts=sample_counts)
    return merged.state, merged.failed, len(merged.updates)


@pytest.fixture
def task_identity():
    """Messages are created inside a Flower task; a unit test plays the SuperLink's ServerApp task."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved
