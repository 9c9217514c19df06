"""Client update, layer-wise aggregation, the server round loop, the simulation runtime."""
