import subprocess
import sys

HEAVY = ["onnxruntime", "openvino", "captum", "pymoo", "onnx", "torchvision"]


def test_import_prunelab_is_lean():
    code = ("import sys, prunelab, prunelab.commands, prunelab.cli, prunelab.pruning, prunelab.criteria;"
            f"bad=[m for m in {HEAVY!r} if m in sys.modules]; print(bad); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
