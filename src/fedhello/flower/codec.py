"""What travels in Flower messages, shared by the server app and the client app.

A state (tensor name -> torch tensor) travels as Flower's own ``ArrayRecord(state)`` and
comes back with ``ArrayRecord.to_torch_state_dict()``: dtype and shape as sent (a wrong
dtype in a reply is rejected by the server's validation, not converted).

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

TRAIN = "train"
QUERY = "query"


def config_json(cfg) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)
