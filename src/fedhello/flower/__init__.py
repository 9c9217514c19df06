"""Fed-HeLLo on Flower: a ServerApp, a ClientApp and the messages between them, over the project's round loop.

- :mod:`fedhello.flower.strategy`: :class:`FedHelloStrategy` (a round's train messages out,
  replies in; not a Flower ``Strategy``: the project's Server loop drives the rounds) and
  :class:`FlowerRunner` (the :class:`~fedhello.federation.server.ClientRunner` over a Flower ``Grid``)
- :mod:`fedhello.flower.server_app`: ``app`` (ServerApp); never imports the client app
- :mod:`fedhello.flower.client_app`: ``app`` (ClientApp)
- :mod:`fedhello.flower.kit`: ``fedhello deploy-kit`` (a throwaway CA, the server certificate, one
  key per node and each host's scripts: TLS and SuperNode authentication)
- :mod:`fedhello.flower.deploy`: ``fedhello deploy-local`` (that kit's scripts on loopback: SuperLink +
  N SuperNodes as processes)
- :mod:`fedhello.flower.node_worker`: ``fedhello node-worker`` (keeps a SuperNode's backbone and data
  loaded across rounds; the ClientApp process Flower starts per message hands it the work)

Messages (``flwr.app.MessageType``; contents as ``RecordDict`` keys). A state
(tensor name -> torch tensor) travels as Flower's own ``ArrayRecord(state)`` and
comes back with ``ArrayRecord.to_torch_state_dict()``: dtype and shape as sent (a
wrong dtype in a reply is rejected by the server's validation, not converted).

- train instruction (``MessageType.TRAIN``, handled by ``@app.train()``):
  ``arrays`` = the whole global adapter (every LoRA tensor + head), ``config`` =
  ``client-id``, ``round``, ``layers``, ``lr``, ``seed``, ``experiment`` (the
  resolved config as JSON), and for rank-heterogeneous strategies ``rank``: then
  ``arrays`` holds only the first ``rank`` components of every LoRA tensor
  (hetlora, flexlora).
- train reply: ``arrays`` = only the tensors the client trained (its layers +
  head), ``metrics`` = ``num-examples``, ``train-loss``, ``train-time-s``.
- queries, one ``@app.query("<action>")`` handler of the ClientApp each, addressed
  with ``message_type="query.<action>"`` (Flower routes them; an action name must
  be a Python identifier, hence ``class_stats``):

  - ``query.hello`` (no content): reply ``config`` = ``partition-id``,
    ``num-partitions``, ``budget`` (0: none declared).
  - ``query.fisher``: ``arrays`` = global adapter, ``config`` = ``client-id``,
    ``experiment``; reply ``arrays`` = ``{"scores": float64[L]}``, ``metrics`` =
    ``num-examples``.
  - ``query.class_stats`` (the class-means head's statistics round, before round
    1): sent as ``fisher``; reply ``arrays`` = ``{"sums": float64[C, D], "counts":
    float64[C]}``, ``metrics`` = ``norm-sum``.

How a ClientApp registers named actions: the docstring of ``ClientApp.query`` in
the installed ``flwr/clientapp/client_app.py``, or
https://flower.ai/docs/framework/ref-api/flwr.clientapp.ClientApp.html
"""
