"""ONNX Runtime targets: the model exported to ONNX, run by an InferenceSession with all graph
optimisations (so Conv+BN+ReLU/Add fusions happen as in deployment) and fixed intra-op threads."""

from __future__ import annotations

import importlib.util

from . import TARGETS
from ._onnx import OnnxBased, input_names, to_onnx
from .base import Target


def _ort():
    from ..errors import PrunelabError

    try:
        import onnxruntime
    except ImportError:
        raise PrunelabError("onnxruntime targets need ONNX Runtime; pip install 'prunelab[onnx]'") \
            from None
    return onnxruntime


def optimised_ops(module, inputs) -> list[tuple[str, str]]:
    """(domain suffix, op type) of every node in the graph ONNX Runtime's CPU provider runs for
    ``module`` after all its graph optimisations, e.g. ``("nchwc", "ReorderInput")``."""
    import os
    import tempfile

    import onnx

    ort = _ort()
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(to_onnx(module, list(inputs)), so,
                             providers=["CPUExecutionProvider"])
        return [(n.domain.split(".")[-1], n.op_type)
                for n in onnx.load(so.optimized_model_filepath).graph.node]


@TARGETS.register("onnxruntime-cpu", description="ONNX Runtime, CPU execution provider (fp32; "
                  "int8: static QDQ)", runtime="onnxruntime", device="cpu", extra="onnx",
                  precisions=("fp32", "int8"))
class OrtCPU(OnnxBased, Target):
    name, runtime, device = "onnxruntime-cpu", "onnxruntime", "cpu"
    packages = ("onnxruntime", "onnx")
    provider = "CPUExecutionProvider"

    @classmethod
    def unavailable(cls):
        for mod in ("onnxruntime", "onnx"):
            if importlib.util.find_spec(mod) is None:
                return f"{cls.name} needs {mod}; pip install 'prunelab[onnx]'"
        return None

    def session(self, model_bytes: bytes):
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.cfg.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return ort.InferenceSession(model_bytes, so, providers=[self.provider])

    def blocked_layout(self) -> tuple[int, int]:
        """Asks ONNX Runtime itself: optimise one conv per input width and see which it moves to
        its blocked NCHWc layout, and which of those need their input reordered.  The block is
        the narrowest input that is reordered (narrower ones are read as NCHW); the alignment the
        coarsest of 4, 8, 16 that every blocked wider input is a multiple of.  ONNX Runtime 1.32
        with AVX-512: (16, 4).  (0, 0) when no conv is blocked on this CPU."""
        if getattr(self, "_layout", None) is None:
            self._layout = (0, 0)
            import torch.nn as nn

            seen = {c: optimised_ops(nn.Conv2d(c, c, 3, padding=1).eval(),
                                     self.inputs([(c, 8, 8)])) for c in (8, 12, 16, 20, 24, 32)}
            reordered = [c for c, ops in seen.items() if ("nchwc", "ReorderInput") in ops]
            if reordered:
                block = min(reordered)
                align = next((a for a in (16, 8, 4) if all(c % a == 0 for c in reordered)), 1)
                self._layout = (block, align)
        return self._layout

    def runner(self, module, inputs):
        sess = self.session(self.onnx_graph(module, inputs))
        feed = {n: x.numpy() for n, x in zip(input_names(len(inputs)), inputs)}
        return lambda: sess.run(None, feed)

    def infer(self, graph: bytes):
        """``f(batch) -> logits`` (numpy) running ``graph`` in this runtime, as timed."""
        sess = self.session(graph)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]


@TARGETS.register("onnxruntime-cuda", description="ONNX Runtime, CUDA execution provider (fp32)",
                  runtime="onnxruntime", device="cuda", extra="onnx (onnxruntime-gpu)",
                  precisions=("fp32",))
class OrtCUDA(OrtCPU):
    name, runtime, device = "onnxruntime-cuda", "onnxruntime", "cuda"
    packages = ("onnxruntime-gpu", "onnx")
    provider = "CUDAExecutionProvider"

    @classmethod
    def unavailable(cls):
        why = OrtCPU.unavailable()
        if why:
            return why
        import onnxruntime  # only when asked whether it is usable; not at `import prunelab`

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return ("ONNX Runtime has no CUDAExecutionProvider here; on a GPU machine pip install "
                    "onnxruntime-gpu")
        return None

    def device_info(self) -> dict:
        from .torch import TorchCUDA

        return TorchCUDA.device_info(self) if TorchCUDA.unavailable() is None else {"gpu": "?"}

    def runner(self, module, inputs):
        # IO binding keeps input and output on the GPU, so the figure is the model, not copies
        sess = self.session(self.onnx_graph(module, inputs))
        ort = _ort()
        binding = sess.io_binding()
        for name, x in zip(input_names(len(inputs)), inputs):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x.numpy(), "cuda",
                                                                               0))
        binding.bind_output("logits", "cuda")

        def run():
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run
