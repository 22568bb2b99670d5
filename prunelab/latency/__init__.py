"""Latency on the target runtime: the measuring protocol, the fingerprint-keyed cache, per-layer
lookup tables, the whole-model predictor and hardware step sizes.

Nothing here imports a backend at import time; targets import ONNX Runtime / OpenVINO when used.
"""
