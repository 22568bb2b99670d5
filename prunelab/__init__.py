"""prunelab: filter pruning that makes CNNs measurably faster on the runtime you deploy with.

``import prunelab`` is light: heavy backends (ONNX Runtime, OpenVINO, captum, pymoo) load only
when a feature that needs them is used.
"""

__version__ = "0.1.0"
