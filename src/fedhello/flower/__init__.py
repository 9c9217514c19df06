"""Fed-HeLLo on Flower: a ServerApp, a ClientApp and a Flower strategy over the project's round loop.

- :mod:`fedhello.flower.codec`: message types and contents (shared by both apps)
- :mod:`fedhello.flower.strategy`: :class:`FedHelloStrategy` (a Flower ``Strategy``) and
  :class:`FlowerRunner` (the :class:`~fedhello.federation.server.ClientRunner` over a Flower ``Grid``)
- :mod:`fedhello.flower.server_app`: ``app`` (ServerApp); never imports the client app
- :mod:`fedhello.flower.client_app`: ``app`` (ClientApp)
- :mod:`fedhello.flower.deploy`: ``fedhello deploy-local`` (SuperLink + N SuperNodes on loopback)
"""
