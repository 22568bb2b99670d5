"""OpenVINO target: the model exported to ONNX, compiled by OpenVINO's CPU plugin with a fixed
thread count, one stream, the latency hint and fp32 inference precision (OpenVINO would otherwise
pick bf16 on CPUs that have it)."""

from __future__ import annotations

import importlib.util

from . import TARGETS
from ._onnx import to_onnx
from .base import Target


@TARGETS.register("openvino-cpu", description="OpenVINO CPU plugin via ONNX (fp32, latency hint)",
                  runtime="openvino", device="cpu", extra="openvino", precisions=("fp32",))
class OpenVinoCPU(Target):
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

    def runner(self, module, inputs):
        core = self.core()
        compiled = core.compile_model(core.read_model(to_onnx(module, inputs)), "CPU", {
            "INFERENCE_NUM_THREADS": self.cfg.threads, "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
        req = compiled.create_infer_request()
        feed = {i: x.numpy() for i, x in enumerate(inputs)}
        # share_inputs/outputs: no copies in Python around the timed inference
        return lambda: req.infer(feed, share_inputs=True, share_outputs=True)
