"""Vendor integrations through the vendors' own clients: Alpaca (alpaca-py) and Polygon (polygon-api-client)."""
