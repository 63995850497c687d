"""Engines: one module each, connected only through the bus."""
