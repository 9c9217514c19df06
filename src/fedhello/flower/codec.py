"""What travels in Flower messages, shared by the server app and the client app.

Message contents (RecordDict keys):

- train instruction (``message_type="train"``): ``arrays`` = the whole global
  adapter (every LoRA tensor + head), ``config`` = ``client-id``, ``round``,
  ``layers``, ``lr``, ``seed``, ``experiment`` (the resolved config as JSON),
  and for rank-heterogeneous strategies ``rank``: then ``arrays`` holds only
  the first ``rank`` components of every LoRA tensor (hetlora, flexlora).
- train reply: ``arrays`` = only the tensors the client trained (its layers +
  head), ``metrics`` = ``num-examples``, ``train-loss``, ``train-time-s``.
- query ``task=hello``: reply ``config`` = ``partition-id``, ``num-partitions``,
  ``budget`` (0: none declared).
- query ``task=fisher``: ``arrays`` = global adapter; reply ``arrays`` =
  ``{"scores": float64[L]}``, ``metrics`` = ``num-examples``.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedhello.model.state import State

TRAIN = "train"
QUERY = "query"


def state_to_record(state: State) -> ArrayRecord:
    """Tensors as numpy arrays, dtype and shape kept exactly."""
    return ArrayRecord({name: Array(t.detach().cpu().contiguous().numpy()) for name, t in state.items()})


def record_to_state(record: ArrayRecord) -> State:
    """numpy arrays back to CPU tensors (dtype as sent: a wrong dtype is caught by validation)."""
    out: State = {}
    for name in record.keys():
        arr = np.array(record[name].numpy(), copy=True)
        out[name] = torch.from_numpy(arr)
    return out


def config_json(cfg) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)
