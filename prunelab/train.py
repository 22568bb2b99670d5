"""Training and fine-tuning: SGD + Nesterov, cosine schedule, batch-wise augmentation, seeds,
resumable from a checkpoint folder written with safetensors (no pickle, even for our own state).

On CPUs with native bf16 (AVX-512 BF16 / AMX) the forward pass runs under bf16 autocast in
channels-last layout, about 2x faster than fp32 on the 2-core machine this project targets;
evaluation is always fp32.

    >>> from prunelab.train import TrainConfig
    >>> TrainConfig(epochs=2, lr=0.05).epochs
    2
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.core import Splits
from .errors import PrunelabError
from .gate import gated
from .kernels import onednn_safe
from .ui import log, progress


def _tr(key: str):
    from .config import default

    return default("train", key)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained; the defaults are ``prunelab train``'s (:mod:`prunelab.config`)."""

    epochs: int = _tr("epochs")
    lr: float = _tr("lr")
    momentum: float = 0.9
    weight_decay: float = _tr("weight_decay")
    batch_size: int = _tr("batch_size")
    seed: int = _tr("seed")
    precision: str = _tr("precision")  # auto | fp32 | bf16
    label_smoothing: float = 0.0
    threads: int | None = _tr("threads")

    def __post_init__(self):
        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not integer(self.epochs) or self.epochs < 1:
            raise PrunelabError("--epochs must be at least 1 (an integer)")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise PrunelabError("--lr must be a positive number, e.g. 0.01")
        if not 0 <= self.weight_decay < math.inf or not 0 <= self.momentum < 1:
            raise PrunelabError("--weight-decay must be >= 0 and momentum in [0, 1)")
        if not integer(self.batch_size) or self.batch_size < 1:
            raise PrunelabError("--batch-size must be an integer of at least 1")
        if self.threads is not None and (not integer(self.threads) or self.threads < 1):
            raise PrunelabError("--threads must be an integer of at least 1")
        if not integer(self.seed):
            raise PrunelabError("--seed must be an integer")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise PrunelabError("--precision must be auto, fp32 or bf16")


def bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@torch.no_grad()
def evaluate(model: nn.Module, batches, max_batches: int | None = None) -> float:
    """Top-1 accuracy (0-1) in fp32, eval mode."""
    was = model.training
    model.eval()
    correct = total = 0
    for i, (x, y) in enumerate(gated(batches)):
        if max_batches is not None and i >= max_batches:
            break
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was)
    return correct / max(total, 1)


def _save_ckpt(ckpt: Path, model, opt, epoch: int, history, cfg: TrainConfig,
               extra: dict | None = None, best: dict | None = None,
               info: dict | None = None) -> None:
    from .io import atomic_dir, write_safetensors

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for i, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"opt.{i}.{j}"] = buf.contiguous()
    meta = {"epoch": epoch, "history": history, "config": asdict(cfg)}
    if extra:
        meta["extra"] = extra
    if info:
        meta["info"] = info
    with atomic_dir(ckpt) as tmp:
        write_safetensors(tensors, tmp / "state.safetensors")
        if best is not None:  # the best epoch's weights survive an interruption too
            write_safetensors(best["state"], tmp / "best.safetensors")
            meta["best"] = {k: v for k, v in best.items() if k != "state"}
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))


def _load_ckpt(ckpt: Path, model, opt, cfg: TrainConfig, extra: dict | None = None):
    from safetensors.torch import load_file

    meta = json.loads((ckpt / "state.json").read_text())
    if meta["config"] != asdict(cfg) or meta.get("extra", {}) != (extra or {}):
        raise PrunelabError(f"checkpoint {ckpt} was made with other settings; delete it or rerun "
                            "with the same options")
    t = load_file(str(ckpt / "state.safetensors"))
    try:
        model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    except RuntimeError:
        raise PrunelabError(f"checkpoint {ckpt} belongs to another model; delete it or rerun "
                            "with the same model") from None
    for i, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            if f"opt.{i}.{j}" in t:
                opt.state[p]["momentum_buffer"] = t[f"opt.{i}.{j}"]
    best = None
    if "best" in meta and (ckpt / "best.safetensors").exists():
        best = {**meta["best"], "state": load_file(str(ckpt / "best.safetensors"))}
    return meta["epoch"], meta["history"], best, meta.get("info", {})


@dataclass
class FitResult:
    """What :func:`fit` did: the per-epoch history and, with ``keep_best``, which epoch it kept."""

    history: list[dict]
    best_epoch: int | None = None  # epoch whose weights the model holds (0: the start)
    best_val_top1: float | None = None
    start_val_top1: float | None = None  # val top-1 before epoch 1 (after BN recalibration)
    final_recal: dict | None = None  # the optional end-of-training BN recalibration


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
            ) -> torch.Tensor:
    """Knowledge distillation (Hinton et al.): KL divergence of the student's softened
    distribution from the teacher's at ``temperature``, scaled by its square (batch mean)."""
    import torch.nn.functional as F

    T = temperature
    return F.kl_div(F.log_softmax(logits / T, 1), F.softmax(teacher_logits / T, 1),
                    reduction="batchmean") * T * T


def train(model: nn.Module, data: Splits, cfg: TrainConfig, checkpoint: str | Path | None = None,
          teacher: nn.Module | None = None, kd_temperature: float = 4.0, kd_weight: float = 0.0,
          desc: str = "train") -> list[dict]:
    """Train ``model`` in place; returns the per-epoch history (loss, val top-1, seconds).

    ``checkpoint`` (a folder) makes training resumable: it is written after every epoch and an
    interrupted run given the same folder and settings continues from the last finished epoch.
    With a ``teacher`` and ``kd_weight > 0`` the loss adds knowledge distillation
    (KL divergence at ``kd_temperature``, Hinton et al.).  The model keeps the last epoch's
    weights; :func:`fit` can keep the best epoch's instead.
    """
    return fit(model, data, cfg, checkpoint, teacher, kd_temperature, kd_weight, desc).history


def fit(model: nn.Module, data: Splits, cfg: TrainConfig, checkpoint: str | Path | None = None,
        teacher: nn.Module | None = None, kd_temperature: float = 4.0, kd_weight: float = 0.0,
        desc: str = "train", keep_best: bool = False, recal_batches: int = 0,
        recal_end: bool = False, extra: dict | None = None,
        on_epoch: Callable[[int, nn.Module, dict], None] | None = None,
        score: Callable[[nn.Module], float] | None = None) -> FitResult:
    """:func:`train` plus what fine-tuning needs.

    ``keep_best``: after the last epoch the model gets back the weights of the epoch with the
    highest validation top-1 (the first such epoch on a tie); the starting weights compete as
    epoch 0 and lose ties, so the result is never worse on validation than what came in.  The
    best weights are also kept in the checkpoint folder, so a resumed run keeps the same best.
    ``recal_batches`` > 0 re-estimates the BN statistics on that many training batches before the
    first epoch (a pruned model's are stale); ``recal_end`` does it again at the end and keeps it
    only if validation top-1 does not drop.  ``extra`` is stored in the checkpoint and must match
    for a resume.  ``on_epoch(epoch, model, row)`` is called after each epoch's checkpoint is
    written.  ``score(model) -> float`` replaces validation top-1 wherever a model is judged
    (higher is better; e.g. a user's own metric), and is recorded as ``val_top1``.
    """
    if recal_batches < 0:
        raise PrunelabError("--recal-batches must be >= 0")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported())
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    batches = data.batches("train", cfg.batch_size, shuffle=True, augment=True, seed=cfg.seed)
    if score is None:
        val = data.batches("val", 500)

        def score(m: nn.Module) -> float:
            return evaluate(m, val)
    steps_per_epoch = len(batches)
    total = cfg.epochs * steps_per_epoch
    start, history, best = 0, [], None
    extra = dict(extra or {})
    if keep_best:
        extra["keep_best"] = True
    if recal_batches:
        extra["recal_batches"] = recal_batches
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and ckpt.exists() and not (ckpt / "state.json").exists() and \
            (not ckpt.is_dir() or any(ckpt.iterdir())):
        raise PrunelabError(f"checkpoint path {ckpt} exists and is not a prunelab checkpoint; "
                            "move it away (prunelab never replaces what it did not write)")
    result = FitResult(history)
    if ckpt and (ckpt / "state.json").exists():
        start, history, best, info = _load_ckpt(ckpt, model, opt, cfg, extra)
        result.history = history
        result.start_val_top1 = info.get("start_val_top1")
        log(f"resuming {desc} from {ckpt} at epoch {start}/{cfg.epochs}")
    else:
        if recal_batches:
            recalibrate_bn(model, data.batches("train", cfg.batch_size, shuffle=True,
                                               seed=cfg.seed), recal_batches)
        if recal_batches or keep_best:
            result.start_val_top1 = score(model)
        if recal_batches:
            log(f"{desc}: BN statistics re-estimated on {recal_batches} training batches, "
                f"val top-1 {result.start_val_top1:.4f}")
        if keep_best:
            best = {"epoch": 0, "val_top1": result.start_val_top1, "state": _state_copy(model)}
    fmt = torch.channels_last if use_bf16 else torch.contiguous_format
    model.to(memory_format=fmt)
    from .distributed import world

    rank, size = world()
    net = model
    if size > 1:  # under torchrun: every size-th batch, gradients averaged (prunelab.distributed)
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    if teacher is not None:
        teacher.eval()
        teacher.to(memory_format=fmt)
    with progress(transient=False) as bar, onednn_safe():
        task = bar.add_task(desc, total=total, completed=start * steps_per_epoch, info="")
        for epoch in range(start, cfg.epochs):
            model.train()
            batches.set_epoch(epoch)
            t0, loss_sum, seen = time.perf_counter(), 0.0, 0
            for step, (x, y) in enumerate(gated(batches)):
                if step % size != rank or step >= steps_per_epoch - steps_per_epoch % size:
                    continue  # another rank's batch (each rank runs as many steps)
                it = epoch * steps_per_epoch + step
                for g in opt.param_groups:
                    g["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * it / total))
                x = x.contiguous(memory_format=fmt)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    logits = net(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                    if teacher is not None and kd_weight > 0:
                        with torch.no_grad():
                            t_logits = teacher(x).float()
                        kd = kd_loss(logits.float(), t_logits, kd_temperature)
                        loss = (1 - kd_weight) * loss + kd_weight * kd
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(y)
                seen += len(y)
                bar.update(task, advance=1, info=f"ep {epoch + 1} loss {loss_sum / seen:.3f}")
            model.to(memory_format=torch.contiguous_format)
            acc = score(model)
            model.to(memory_format=fmt)
            history.append({"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "val_top1": acc,
                            "seconds": time.perf_counter() - t0})
            log(f"{desc} epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.4f} "
                f"val top-1 {acc:.4f} ({history[-1]['seconds']:.0f}s)")
            if keep_best and (acc > best["val_top1"] or
                              (acc == best["val_top1"] and best["epoch"] == 0)):
                best = {"epoch": epoch + 1, "val_top1": acc, "state": _state_copy(model)}
            if ckpt and rank == 0:  # one writer
                _save_ckpt(ckpt, model, opt, epoch + 1, history, cfg, extra,
                           best if keep_best else None,
                           {"start_val_top1": result.start_val_top1}
                           if result.start_val_top1 is not None else None)
            if on_epoch is not None:
                on_epoch(epoch + 1, model, history[-1])
            _kill_after_epoch(epoch + 1)
    model.to(memory_format=torch.contiguous_format)
    if teacher is not None:
        teacher.to(memory_format=torch.contiguous_format)
    if keep_best and best is not None:
        model.load_state_dict(best["state"])
        result.best_epoch, result.best_val_top1 = best["epoch"], best["val_top1"]
        if best["epoch"] == 0:
            log(f"{desc}: no epoch beat the starting weights on validation; keeping those")
        elif best["epoch"] != len(history):
            log(f"{desc}: keeping epoch {best['epoch']} (best val top-1 {best['val_top1']:.4f})")
    if recal_end and recal_batches:
        before = result.best_val_top1 if keep_best else history[-1]["val_top1"]
        kept = _state_copy(model)
        recalibrate_bn(model, data.batches("train", cfg.batch_size, shuffle=True,
                                           seed=cfg.seed + 1), recal_batches)
        acc = score(model)
        if acc < before:
            model.load_state_dict(kept)
        result.final_recal = {"batches": recal_batches, "val_top1": acc, "kept": acc >= before}
    model.eval()
    return result


def _kill_after_epoch(epoch: int) -> None:
    """PRUNELAB_KILL_AFTER_EPOCHS=N kills the process (SIGKILL) after the N-th epoch's
    checkpoint: how the tests show that a killed (distributed) fine-tune resumes."""
    stop = os.environ.get("PRUNELAB_KILL_AFTER_EPOCHS")
    if stop and epoch >= int(stop):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def discard_checkpoint(checkpoint: str | Path | None) -> None:
    if checkpoint and Path(checkpoint).exists():
        shutil.rmtree(checkpoint, ignore_errors=True)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, num_batches: int = 20) -> nn.Module:
    """Re-estimate BN running statistics on a few training batches (no weight update).

    Pruning shifts every downstream activation distribution; fresh BN statistics recover much of
    the accuracy without fine-tuning, so candidate structures are compared fairly.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():  # statistics only: no autograd graph to record
        for i, (x, _) in enumerate(gated(batches)):
            if i >= num_batches:
                break
            model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()
