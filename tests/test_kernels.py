"""The oneDNN AVX2 1x1 strided weight-gradient fault (see prunelab.kernels): the failing case runs
in a child process with ``ONEDNN_MAX_CPU_ISA=AVX2`` (so an AVX-512 machine takes the AVX2
kernels too) and must finish, with and without channels-last weights, and train like NCHW."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from prunelab.kernels import affected, onednn_safe

from .conftest import hang_guard

CHILD = textwrap.dedent("""
    import sys, torch, torch.nn as nn
    from prunelab.kernels import onednn_safe
    torch.set_num_threads(1)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 1, stride=2, bias=False)
    if sys.argv[1] == "cl-weight":
        conv.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    with onednn_safe():
        for _ in range(4):
            x = torch.randn(32, 4, 32, 32).contiguous(memory_format=torch.channels_last)
            opt.zero_grad()
            conv(x.requires_grad_()).square().mean().backward()
            opt.step()
    print("finished", float(conv.weight.abs().sum()))
""")


@pytest.mark.parametrize("case", ["nchw-weight", "cl-weight"])
def test_failing_kernel_case_finishes_under_avx2(case):
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, case], capture_output=True, text=True,
                       env=env, timeout=hang_guard(300))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("finished")


def test_guard_picks_only_the_faulty_shape():
    assert affected(nn.Conv2d(4, 8, 1, stride=2))
    assert not affected(nn.Conv2d(4, 8, 1, stride=1))      # stride 1: fine
    assert not affected(nn.Conv2d(4, 8, 3, stride=2))      # 3x3: fine
    assert not affected(nn.Conv2d(1, 8, 1, stride=2))      # one channel: fine
    assert not affected(nn.Conv2d(32, 8, 1, stride=2))     # a full SIMD width: fine
    assert not affected(nn.Conv2d(4, 4, 1, stride=2, groups=4))


def test_guard_gives_the_same_gradients_and_leaves_no_hook():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 1, stride=2, bias=False)
    x = torch.randn(3, 4, 8, 8)
    conv(x).square().sum().backward()
    ref = conv.weight.grad.clone()
    conv.weight.grad = None
    with onednn_safe(), onednn_safe():  # re-entrant
        conv(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, ref)
    seen = []
    h = nn.modules.module.register_module_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        conv(xc)                      # outside the guard: the input goes through untouched
    finally:
        h.remove()
    assert seen[0] is xc


def test_finetune_of_a_pruned_resnet_runs_under_avx2(tmp_path):
    """The issue's repro: the tests' tiny ResNet pruned with l1 at 0.5, then SGD steps (step 1
    used to hang).  In a child process, under ONEDNN_MAX_CPU_ISA=AVX2."""
    code = textwrap.dedent("""
        import torch, torch.nn.functional as F
        from prunelab.models import build
        from prunelab.pruning import prune
        from prunelab.criteria import make_criterion
        from prunelab.kernels import onednn_safe
        torch.manual_seed(0)
        m = build("resnet20", in_channels=1, num_classes=4, width=0.5).eval()
        net = prune(m, make_criterion("l1"), ratio=0.5, input_shape=[1, 32, 32],
                    num_classes=4).model
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        net.train()
        with onednn_safe():
            for step in range(3):
                x, y = torch.randn(32, 1, 32, 32), torch.randint(0, 4, (32,))
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
        print("steps", step + 1)
    """)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=hang_guard(300))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "steps 3"
