"""The bottom layer of the platform: event kinds and batches, the bus, clocks, the engine runtime,
configuration and the numerical kernels shared by engines. Nothing here imports an engine."""
