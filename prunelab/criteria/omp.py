"""FP-OMP (seed C) and LRF (its baseline): choose filters that the kept ones can reproduce, and
compensate the removed ones in the weights.

Both read a group's filters as rows F (channels x (inputs*k*k), concatenated over the group's
producer layers, so coupled channels share one fit).

* **fp-omp**: simultaneous orthogonal matching pursuit over the L2-normalised rows: greedily keep
  the filter i maximising sum_j |<r_j, f_i>| over the residuals r_j of *all* filters, refit every
  filter on the kept atoms by ridge least squares (Lambda = F A^T (A A^T + ridge I)^-1, ridge 1 as
  in the paper's code), repeat.  The greedy order is a full ranking, so stopping at any keep count
  gives exactly the set OMP would keep.
* **lrf**: a filter's score is the least-squares error of reproducing it from the layer's other
  filters times the L2 norm of the next layers' weights that read it; the lowest goes, then all
  scores are recomputed without it (an O(C^2) inverse downdate per step).

Compensation (removed filter j ~ sum_k lambda_jk f_k, so its consumers can absorb it):

* ``fold`` (default): before the channels go, a consumer layer's weights take the removed
  channels' share, W[:, k] += sum_j W[:, j] lambda'_jk, where lambda' accounts for the BN between
  producer and consumer (lambda'_jk = lambda_jk a_j / a_k with a the BN scales; the BN shifts are
  corrected through the consumer's bias or the running mean of the BN after it).  Only where the
  path is linear, i.e. the consumer reads the producer's (or its BN's) output directly, as after
  MobileNetV2's linear bottlenecks: across a ReLU the linear relation does not hold, and folding it
  anyway measurably hurt (our choice, tested).  Groups with several producers or a depthwise conv
  are pruned without compensation in this mode.  Networks with ReLU after every conv (VGG,
  ResNet) get their compensation from ``sandwich``.
* ``sandwich`` (the paper's structure): each producer conv becomes the pruned conv followed by a
  1x1 conv that maps the kept channels back to all of them (identity + Lambda), so compensation is
  exact and linear before BN.  The group's BN and consumers keep their width; the 1x1 costs MACs
  and latency, which the criteria evaluation reports.
* ``none``: the ablation.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import PrunelabError
from . import criterion
from .base import Criterion, GroupInfo

MODES = ("fold", "sandwich", "none")


def group_filters(modules, group: GroupInfo) -> torch.Tensor:
    """Rows = channels, columns = every producer's filter weights, concatenated."""
    rows = []
    for n in group.producers:
        w = modules[n].weight.detach().float()
        if w.shape[0] == group.width:
            rows.append(w.reshape(group.width, -1))
    return torch.cat(rows, 1)


def ridge_coefficients(F: torch.Tensor, keep: list[int], ridge: float) -> torch.Tensor:
    """Lambda (C x |keep|): every row of F fitted on the kept rows by ridge least squares."""
    A = F[keep]
    gram = A @ A.T + ridge * torch.eye(len(keep), dtype=F.dtype)
    return torch.linalg.solve(gram, A @ F.T).T


def somp_order(Fn: torch.Tensor, ridge: float, limit: int | None = None) -> list[int]:
    """Greedy simultaneous-OMP selection order over normalised rows ``Fn``."""
    C = Fn.shape[0]
    limit = C if limit is None else limit
    chosen: list[int] = []
    R = Fn.clone()
    for _ in range(limit):
        score = (R @ Fn.T).abs().sum(0)
        if chosen:
            score[chosen] = -1.0
        chosen.append(int(score.argmax()))
        R = Fn - ridge_coefficients(Fn, chosen, ridge) @ Fn[chosen]
    return chosen


def lrf_removal_order(F: torch.Tensor, next_norm: torch.Tensor, eps: float = 1e-6) -> list[int]:
    """Channels in the order LRF removes them (least replaceable-error x next-norm first)."""
    C = F.shape[0]
    G = F.double() @ F.double().T
    G += eps * G.diagonal().mean().clamp_min(1e-12) * torch.eye(C, dtype=G.dtype)
    inv = torch.linalg.inv(G)
    alive = list(range(C))
    order = []
    nn_ = next_norm.double()
    while len(alive) > 1:
        # leave-one-out residual of regressing row j on the other alive rows: 1 / (G^-1)_jj
        err = 1.0 / inv.diagonal().clamp_min(1e-30)
        idx = int(torch.argmin(err * nn_[alive]))
        order.append(alive.pop(idx))
        col = inv[:, idx].clone()
        inv = inv - torch.outer(col, col) / col[idx]  # inverse of the Gram without row/col j
        rest = [k for k in range(inv.shape[0]) if k != idx]
        inv = inv[rest][:, rest]
    order.append(alive[0])
    return order


class Compensating(Criterion):
    """Shared compensation for fp-omp and lrf (see module docs)."""

    def __init__(self, compensation: str = "fold", ridge: float = 1.0, reduction: str = "sum",
                 seed: int = 0):
        super().__init__(reduction, seed)
        if compensation not in MODES:
            raise PrunelabError(f"compensation must be one of {', '.join(MODES)}")
        if ridge < 0:
            raise PrunelabError("ridge must be >= 0")
        self.compensation, self.ridge = compensation, ridge

    # scores: rank -> higher = kept longer
    def score(self, group: GroupInfo) -> torch.Tensor:
        order = self.keep_order(group)  # most important first
        s = torch.empty(group.width)
        s[torch.tensor(order)] = torch.arange(group.width, 0, -1, dtype=torch.float)
        return s

    def lambdas(self, group: GroupInfo, removed: list[int]):
        F = group_filters(self.modules, group)
        keep = [c for c in range(group.width) if c not in set(removed)]
        norms = F.norm(dim=1).clamp_min(1e-12)
        lam_n = ridge_coefficients(F / norms[:, None], keep, self.ridge)
        lam = lam_n * norms[:, None] / norms[keep][None, :]  # back to raw filter scale
        return keep, lam

    def before_prune(self, model, groups, removed, input_shape):
        if self.compensation != "fold":
            return
        from .calib import input_sources

        mods = dict(model.named_modules())
        src = input_sources(model, input_shape)
        bn_after = {s: n for n, s in src.items()
                    if isinstance(mods[n], nn.modules.batchnorm._BatchNorm)}
        for g in groups:
            if g.name not in removed or len(g.producers) != 1:
                continue
            if any(isinstance(mods[n], nn.Conv2d) and mods[n].groups > 1
                   for n in g.producers + g.consumers):
                continue
            p = g.producers[0]
            direct = {p, bn_after.get(p)}
            linear = [n for n in g.consumers if src.get(n) in direct]
            if not linear:
                continue
            keep, lam = self.lambdas(g, removed[g.name])
            rem = removed[g.name]
            a, b = _bn_affine(mods, bn_after.get(p), g.width)
            lam_bn = lam * a[:, None] / a[None, keep]  # lambda'_jk = lambda_jk a_j / a_k
            shift = b - lam_bn @ b[keep]  # c_j = b_j - sum_k lambda'_jk b_k
            for n in linear:
                if src.get(n) == p:  # reads the raw conv output: no BN affine in between
                    _fold_into(mods, n, keep, rem, lam, torch.zeros(g.width), bn_after.get(n))
                else:
                    _fold_into(mods, n, keep, rem, lam_bn, shift, bn_after.get(n))

    def apply(self, model, groups, removed) -> bool:
        """Sandwich mode owns the structural change; returns True when it did the pruning."""
        if self.compensation != "sandwich":
            return False
        from ..models._common import Sandwich

        for g in groups:
            if g.name not in removed:
                continue
            keep, lam = self.lambdas(g, removed[g.name])
            for n in g.producers:
                conv = model.get_submodule(n)
                if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
                    raise PrunelabError(f"sandwich compensation needs plain conv producers; "
                                        f"{n!r} is {type(conv).__name__}(groups="
                                        f"{getattr(conv, 'groups', '-')}); use compensation=fold")
                small = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride,
                                  conv.padding, conv.dilation, 1, conv.bias is not None)
                small.weight.data = conv.weight.data[keep].clone()
                if conv.bias is not None:
                    small.bias.data = conv.bias.data[keep].clone()
                mix = nn.Conv2d(len(keep), conv.out_channels, 1, bias=False)
                m = lam.clone()
                m[keep] = torch.eye(len(keep))
                mix.weight.data = m.view(conv.out_channels, len(keep), 1, 1).to(conv.weight.dtype)
                model.set_submodule(n, Sandwich(small, mix))
        return True


def _bn_affine(mods, bn_name, width):
    bn = mods.get(bn_name) if bn_name else None
    if bn is None or bn.running_var is None:
        return torch.ones(width), torch.zeros(width)
    a = (bn.weight.detach() if bn.weight is not None else torch.ones(width)) / torch.sqrt(
        bn.running_var + bn.eps)
    b = (bn.bias.detach() if bn.bias is not None else torch.zeros(width)) - a * bn.running_mean
    return a.float(), b.float()


@torch.no_grad()
def _fold_into(mods, name, keep, removed, lam_bn, shift, bn_after_consumer):
    m = mods[name]
    W = m.weight.data
    if isinstance(m, nn.Linear):
        W[:, keep] += W[:, removed] @ lam_bn[removed]
        const = W[:, removed] @ shift[removed]
    else:
        # W: (out, C, kh, kw); mix input channels: W[:, k] += sum_j W[:, j] lam_jk
        W[:, keep] += torch.einsum("ojhw,jk->okhw", W[:, removed], lam_bn[removed])
        const = torch.einsum("ojhw,j->o", W[:, removed], shift[removed])
    if m.bias is not None:
        m.bias.data += const
    elif bn_after_consumer is not None:
        mods[bn_after_consumer].running_mean -= const


@criterion(description="simultaneous OMP over the layer's filters, removed "
           "filters compensated in the weights (Purohit et al. 2022)")
class FPOMP(Compensating):
    name = "fp-omp"

    def keep_order(self, group):
        F = group_filters(self.modules, group)
        return somp_order(F / F.norm(dim=1, keepdim=True).clamp_min(1e-12), self.ridge)


@criterion(description="least-squares replaceability x next-layer weight norm, one "
           "filter at a time, with compensation (Joo et al. 2021)")
class LRF(Compensating):
    name = "lrf"

    def keep_order(self, group):
        F = group_filters(self.modules, group)
        nxt = torch.zeros(group.width, dtype=torch.float64)
        for n in group.consumers:
            w = self.modules[n].weight.detach().double()
            if w.shape[1] == group.width:
                nxt += w.transpose(0, 1).reshape(group.width, -1).pow(2).sum(1)
        nxt = nxt.sqrt() if len(group.consumers) else torch.ones(group.width, dtype=torch.float64)
        return list(reversed(lrf_removal_order(F, nxt.clamp_min(1e-12))))
