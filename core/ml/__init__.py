"""Machine learning: datasets from the feature set, LightGBM and TFT models, ONNX export, the model
registry, walk-forward training with the promotion gate. Serving (engines/inference.py) needs only
onnxruntime; the modules that train the TFT import torch, the optional extra `utp[train]`."""
