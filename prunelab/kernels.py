"""Work-arounds for CPU kernels that misbehave on some machines.

**oneDNN's AVX2 1x1 strided weight-gradient kernel.** On CPUs without AVX-512 (or with
``ONEDNN_MAX_CPU_ISA=AVX2``), the weight gradient of a 1x1 convolution with stride > 1 whose input
is in channels-last layout and has fewer input channels than the SIMD width (2-7 channels on AVX2)
corrupts memory: the backward pass hangs forever in ``jit_avx2_1x1_convolution_bwd_weights``, or
the process dies with a segmentation fault.  A pruned ResNet's downsampling shortcut hits exactly
that (a stage pruned to 4 input channels), and a 1-channel input image makes PyTorch pick
channels-last for every feature map, so it happens in plain fp32 training too.  Found with
``bench``-style bisection over (channels, stride, kernel, layout, threads): only that combination
fails; the same convolution in NCHW layout, with stride 1, or with >= 8 input channels is fine.
A channels-last *weight* selects the faulty kernel even for an NCHW input.

:func:`onednn_safe` runs such convolutions in NCHW (input and weight strides) while gradients
are being taken (training, gradient-based criteria); everything else keeps its layout.  The guard is shape-based, not
CPU-based: the affected convolutions are tiny, so the layout change costs nothing measurable, and
it also covers AVX-512 machines whose 16-wide kernels have not been checked for the same fault.

    >>> import torch, torch.nn as nn
    >>> conv = nn.Conv2d(4, 8, 1, stride=2, bias=False)
    >>> x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    >>> with onednn_safe():
    ...     conv(x).sum().backward()
    >>> conv.weight.grad.shape
    torch.Size([8, 4, 1, 1])
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn as nn

#: the widest SIMD width in channels (AVX-512, fp32): a 1x1 strided conv with fewer input
#: channels than this gets NCHW inputs under :func:`onednn_safe`
SIMD_CHANNELS = 16

_lock = threading.Lock()
_users = 0
_handle = None


def affected(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution of the faulty kernel's shape."""
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
            and max(module.stride) > 1 and module.groups == 1
            and 1 < module.in_channels < SIMD_CHANNELS)


def _pre_hook(module: nn.Module, args):
    if not torch.is_grad_enabled() or not affected(module) or not args:
        return None
    w = module.weight
    if w.stride() != _nchw_strides(w.shape):
        # a channels-last weight (``model.to(memory_format=channels_last)``) selects the faulty
        # kernel whatever the input's layout; a 1x1 weight counts as contiguous in either layout,
        # so ``.contiguous()`` would keep its strides: re-stride it (same values, same Parameter)
        with torch.no_grad():
            w.data = w.data.clone(memory_format=torch.contiguous_format)
    x = args[0]
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.stride() != _nchw_strides(x.shape):
        return (x.clone(memory_format=torch.contiguous_format),) + tuple(args[1:])
    return None


def _nchw_strides(shape) -> tuple[int, ...]:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


@contextlib.contextmanager
def onednn_safe():
    """While active (re-entrant, thread-safe), affected convolutions get NCHW inputs whenever
    gradients are enabled.  Installed as one global forward pre-hook, so it covers the user's
    modules and captum's passes alike, and removed when the last user leaves."""
    global _users, _handle
    with _lock:
        _users += 1
        if _handle is None:
            _handle = nn.modules.module.register_module_forward_pre_hook(_pre_hook)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _handle is not None:
                _handle.remove()
                _handle = None
