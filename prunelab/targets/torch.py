"""Eager PyTorch targets: ``torch-cpu`` (fixed thread count) and ``torch-cuda``."""

from __future__ import annotations

import contextlib
import platform

import torch
import torch.nn as nn

from . import TARGETS
from .base import Target


@TARGETS.register("torch-cpu", description="eager PyTorch on the CPU (fp32, inference_mode)",
                  runtime="torch", device="cpu", extra="-", precisions=("fp32",))
class TorchCPU(Target):
    name, runtime, device = "torch-cpu", "torch", "cpu"

    @contextlib.contextmanager
    def scope(self):
        old = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def runner(self, module: nn.Module, inputs):
        module = module.eval().to(self.device)
        xs = [x.to(self.device) for x in inputs]

        def run():
            with torch.inference_mode():
                return module(*xs)

        return run


@TARGETS.register("torch-cuda", description="eager PyTorch on an NVIDIA GPU (fp32, synchronised)",
                  runtime="torch", device="cuda", extra="-", precisions=("fp32",))
class TorchCUDA(TorchCPU):
    name, runtime, device = "torch-cuda", "torch", "cuda"

    @classmethod
    def unavailable(cls):
        if not torch.cuda.is_available():
            return "no CUDA GPU visible to PyTorch; run on a machine with an NVIDIA GPU and a CUDA build of torch"
        return None

    def device_info(self) -> dict:
        p = torch.cuda.get_device_properties(0)
        return {"gpu": p.name, "gpu_memory_gb": round(p.total_memory / 2**30), "cuda":
                torch.version.cuda, "host": platform.machine()}

    def runner(self, module, inputs):
        run = super().runner(module, inputs)

        def synced():
            out = run()
            torch.cuda.synchronize()
            return out

        return synced
