"""Generated contracts of the platform (package `utp.v1`). Regenerate with `python proto/generate.py`."""
