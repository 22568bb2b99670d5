"""Candidate evaluations on Ray workers (``--workers N``, ``[run] workers``, ``workers=``).

A search hands the driver batches of candidates (an NSGA-II generation, CIE's sweep, ABC's
initial colony, omp-search's trials of one step); :meth:`Evaluator.evaluate_many
<prunelab.searches.evaluator.Evaluator.evaluate_many>` sends the ones not in the log to a pool
of Ray actors and logs their results in the batch's order.  Each actor holds one
:class:`~prunelab.searches.evaluator.Candidates` (the unpruned model, the criterion's scores,
the data), shipped once through Ray's object store, and runs PyTorch on one thread, so a run
with 1 worker and one with N workers and the same seed evaluate the same candidates to the same
figures and choose the same widths.

Only accuracy work goes to the workers.  Latency is measured where the target is: on a cluster
(``ray_address``, or a Ray the caller started) with a node that advertises the resource
``target:<name>`` (``ray start --resources '{"target:onnxruntime-cpu": 1}'``), every
measurement (the lookup table, the predictor's anchor, the front, the confirmation) runs on one
:class:`RemoteTarget` actor holding that resource, so one at a time per device, and only between
batches, when the workers are idle; the figures, the latency cache's device fingerprint and the
result's ``measured_on`` are that node's.  Without such a node (and with a local Ray instance)
the driver measures, after the workers stop: start it where the target is.

Without ``workers`` nothing here is imported, nor is Ray (an optional extra:
``pip install prunelab[ray]``).  ``ray_address``: ``None`` starts a local Ray instance with
``workers`` CPUs; ``"auto"`` or ``"ray://host:10001"`` joins a running cluster.
"""

from __future__ import annotations

import contextlib

from ..errors import PrunelabError
from ..ui import log


def _ray():
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise PrunelabError("--workers needs Ray: pip install 'prunelab[ray]' (or leave "
                            "--workers out to evaluate in this process)") from None
    return ray, ActorPool


def connect(workers: int, address: str | None) -> bool:
    """Start or join Ray unless this process is connected already; True when it started or
    joined here (then :func:`disconnect` ends it)."""
    ray, _ = _ray()
    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=workers, object_store_memory=256 * 2**20, **kw)
    except Exception as e:  # ConnectionError, RuntimeError, ...: one line
        raise PrunelabError(f"cannot start Ray{' at ' + address if address else ''}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                            ) from None
    return True


def disconnect() -> None:
    ray, _ = _ray()
    ray.shutdown()


def resource(target_name: str) -> str:
    """The Ray resource a node with the target advertises."""
    return f"target:{target_name}"


def _where() -> dict:
    import os
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid()}


class _Meter:
    """A Ray actor on the node with the target: builds the target there and times models."""

    def __init__(self, cfg):
        from ..targets import make_target

        self.target = make_target(cfg)

    def info(self) -> dict:
        t = self.target
        return {"fingerprint": t.fingerprint(), "blocked_layout": t.blocked_layout(), **_where()}

    def time(self, jobs: list, protocol) -> list:
        from ..latency.measure import time_runners

        t = self.target
        with t.scope():
            runners = [t.runner(m, t.inputs(shapes, seed)) for m, shapes, seed in jobs]
        return time_runners(t, runners, protocol)


class _Job:
    """A model and its input shapes, timed by the remote target (``runner``'s stand-in)."""

    def __init__(self, module, inputs):
        self.module, (self.shapes, self.seed) = module, inputs


class RemoteTarget:
    """The target of ``cfg`` on the Ray node that advertises :func:`resource`: the same
    interface as :class:`~prunelab.targets.base.Target` for everything a search measures
    (:func:`~prunelab.latency.measure.time_runners` hands it the jobs); one actor, so one
    measurement at a time on that device."""

    def __init__(self, cfg):
        ray, _ = _ray()
        self.cfg, self.name = cfg, cfg.target
        self.resource = resource(cfg.target)
        self._ray = ray
        self.actor = ray.remote(num_cpus=0, resources={self.resource: 1})(_Meter).remote(cfg)
        try:
            self._info = ray.get(self.actor.info.remote())
        except ray.exceptions.RayActorError as e:
            raise PrunelabError(f"the node with {self.resource} cannot build target "
                                f"{cfg.target}: {str(e.cause if hasattr(e, 'cause') else e)}"
                                .splitlines()[0]) from None

    def fingerprint(self) -> dict:
        return self._info["fingerprint"]

    def device_info(self) -> dict:
        return self._info["fingerprint"]["device"]

    def versions(self) -> dict:
        return self._info["fingerprint"]["versions"]

    def blocked_layout(self) -> tuple[int, int]:
        return tuple(self._info["blocked_layout"])

    def measured_on(self) -> dict:
        return {"resource": self.resource, "host": self._info["host"], "pid": self._info["pid"]}

    def scope(self):
        return contextlib.nullcontext()

    def inputs(self, shapes, seed: int = 0):
        return [list(s) for s in shapes], seed

    def runner(self, module, inputs) -> _Job:
        return _Job(module, inputs)

    def time_jobs(self, jobs: list[_Job], protocol) -> list:
        return self._ray.get(self.actor.time.remote(
            [(j.module, j.shapes, j.seed) for j in jobs], protocol))

    def close(self) -> None:
        self._ray.kill(self.actor)


def _connected() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def measuring_on(target) -> dict:
    """Where ``target`` times models: its Ray node, or this process."""
    return target.measured_on() if hasattr(target, "measured_on") else \
        {"resource": None, **_where()}


@contextlib.contextmanager
def measuring_target(cfg, target=None, workers: int = 0, address: str | None = None):
    """The target to measure on: on a Ray cluster (``address``, or a Ray this process is
    connected to) with a node that advertises :func:`resource`, a :class:`RemoteTarget` there;
    else ``target`` (built from ``cfg`` here when None).  Ray is left as it was found."""
    from ..targets import make_target

    if hasattr(target, "time_jobs") or not workers or not (address or _connected()):
        yield target or make_target(cfg)
        return
    ray, _ = _ray()
    started = connect(workers, address)
    remote = None
    try:
        res = resource(cfg.target)
        if ray.cluster_resources().get(res, 0) >= 1:
            remote = RemoteTarget(cfg)
            log(f"latency measured on the Ray node with {res} ({remote.measured_on()['host']})")
        else:
            log(f"no Ray node advertises {res}: latency is measured in this process, on "
                f"{_where()['host']} (on the node with the target: ray start --resources "
                f"'{{\"{res}\": 1}}')")
        yield remote or target or make_target(cfg)
    finally:
        if remote is not None:
            remote.close()
        if started:
            disconnect()


class _Worker:
    """A Ray actor: one :class:`Candidates`, PyTorch on one thread."""

    def __init__(self, cands):
        import torch

        torch.set_num_threads(1)
        self.cands = cands

    def run(self, keep: dict, train_batches: int) -> dict:
        return self.cands.run(keep, "", train_batches)

    def rich(self, keep: dict, train_batches: int, steps: int) -> dict:
        return self.cands.rich(keep, "", train_batches, steps)


class RayPool:
    """``workers`` Ray actors evaluating candidates; :meth:`map` yields results in order."""

    def __init__(self, workers: int, address: str | None, cands):
        ray, ActorPool = _ray()
        self.started = connect(workers, address)
        ref = ray.put(cands)                         # model, scores and data: once
        actor = ray.remote(num_cpus=1)(_Worker)
        self.actors = [actor.remote(ref) for _ in range(workers)]
        self.pool = ActorPool(self.actors)
        self._ray = ray

    def map(self, jobs: list[tuple], method: str = "run"):
        """Results of ``(keep, train_batches)`` jobs (``method="rich"``: ``(keep,
        train_batches, steps)``), in the jobs' order (a worker's :class:`PrunelabError`, e.g.
        from the user's ``eval_fn``, stays one line)."""
        it = self.pool.map(lambda a, job: getattr(a, method).remote(*job), jobs)
        while True:
            try:
                r = next(it)
            except StopIteration:
                return
            except self._ray.exceptions.RayTaskError as e:
                if isinstance(getattr(e, "cause", None), PrunelabError):
                    raise PrunelabError(str(e.cause)) from None
                raise
            yield r

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
        if self.started:
            disconnect()
