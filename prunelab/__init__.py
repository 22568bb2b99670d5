"""prunelab: filter pruning that makes CNNs measurably faster on the runtime you deploy with.

The public API is the object core (:mod:`prunelab.core`)::

    import prunelab as pl
    result = pl.search(model, example_inputs, train=train_loader, val=val_loader,
                       target="onnxruntime-cpu", budget="speedup=2")
    tuned = pl.finetune(result.model, teacher=model, train=train_loader, val=val_loader)

``import prunelab`` is light: torch and the heavy backends (ONNX Runtime, OpenVINO, captum,
pymoo) load only when a feature that needs them is used.
"""

from .version import __version__

_CORE = ("search", "prune", "finetune", "evaluate", "save", "load", "export_onnx", "SearchResult",
         "FinetuneResult")
__all__ = [*_CORE, "LoaderData", "__version__"]


def __getattr__(name: str):
    if name in _CORE:
        from . import core

        return getattr(core, name)
    if name == "LoaderData":
        from .data.loaders import LoaderData

        return LoaderData
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")
