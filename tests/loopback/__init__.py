"""A loopback server that speaks the vendors' REST and WebSocket APIs in their documented message shapes.

The real clients (alpaca-py, polygon-api-client) are pointed at it through their base-URL settings.
"""
