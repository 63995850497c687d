"""Persistence: hot state in LMDB (`state`) and the real market data shipped in packages (`datasets`)."""
