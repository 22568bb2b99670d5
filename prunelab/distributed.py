"""Fine-tuning under ``torchrun`` DDP (``prunelab finetune ... --nproc N``).

``--nproc N`` starts ``python -m torch.distributed.run --standalone --nproc_per_node N`` on the
same command (without ``--nproc``); each of the N processes finds ``WORLD_SIZE`` in its
environment, joins the process group (gloo on CPU, nccl when CUDA is there) and runs the same
fine-tune: every rank reads the same shuffled batches and takes every N-th one (the global batch
of a step is N x ``--batch-size``), gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`, BN buffers follow rank 0, and the teacher
runs on every rank.  Validation, the best-epoch choice and the final BN re-estimation are
computed alike on every rank (same weights, same data); only rank 0 writes: the checkpoint after
each epoch, the lock, the result folder and the output.  A killed run resumes from the
checkpoint like a single-process one.  On a cluster, call ``torchrun`` yourself with
``--nnodes``/``--rdzv-endpoint`` and the same ``prunelab finetune`` command.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .errors import PrunelabError


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process ((0, 1) outside a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env() -> bool:
    """Join the process group ``torchrun`` described in the environment; False when there is
    none (a plain single process)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_rank() != 0:
        os.environ["PRUNELAB_QUIET"] = "1"  # one progress bar, one log: rank 0's
    return True


def launch(argv: list[str], nproc: int, module: str = "prunelab.cli") -> int:
    """Run ``python -m module`` with ``argv`` (for ``prunelab``: no ``--nproc``) in ``nproc``
    processes under torchrun; its exit code."""
    if nproc < 1:
        raise PrunelabError("--nproc must be >= 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", module, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(cmd, env=env).returncode


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``.

    >>> strip_nproc(["finetune", "m", "--nproc", "2", "--epochs", "1", "--nproc=3"])
    ['finetune', 'm', '--epochs', '1']
    """
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out
