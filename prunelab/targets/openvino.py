"""OpenVINO target: the model exported to ONNX, compiled by OpenVINO's CPU plugin with a fixed
thread count, one stream, the latency hint and fp32 inference precision (OpenVINO would otherwise
pick bf16 on CPUs that have it)."""

from __future__ import annotations

import importlib.util

from . import TARGETS
from ._onnx import OnnxBased
from .base import Target


@TARGETS.register("openvino-cpu", description="OpenVINO CPU plugin via ONNX (fp32, latency hint; "
                  "int8: the same QDQ graph as onnxruntime-cpu)", runtime="openvino",
                  device="cpu", extra="openvino", precisions=("fp32", "int8"))
class OpenVinoCPU(OnnxBased, Target):
    name, runtime, device = "openvino-cpu", "openvino", "cpu"
    packages = ("openvino", "onnx")

    @classmethod
    def unavailable(cls):
        for mod in ("openvino", "onnx"):
            if importlib.util.find_spec(mod) is None:
                return f"{cls.name} needs {mod}; pip install 'prunelab[openvino]'"
        return None

    _core = None

    def core(self):
        if OpenVinoCPU._core is None:
            import openvino

            OpenVinoCPU._core = openvino.Core()
        return OpenVinoCPU._core

    def compiled(self, graph: bytes):
        core = self.core()
        return core.compile_model(core.read_model(graph), "CPU", {
            "INFERENCE_NUM_THREADS": self.cfg.threads, "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})

    def infer(self, graph: bytes):
        """``f(batch) -> logits`` (numpy) running ``graph`` in this runtime, as timed."""
        req = self.compiled(graph).create_infer_request()
        return lambda x: req.infer({0: x})[0].copy()

    def runner(self, module, inputs):
        req = self.compiled(self.onnx_graph(module, inputs)).create_infer_request()
        feed = {i: x.numpy() for i, x in enumerate(inputs)}
        # share_inputs/outputs: no copies in Python around the timed inference
        return lambda: req.infer(feed, share_inputs=True, share_outputs=True)
