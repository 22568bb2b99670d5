"""Candidate evaluations on Ray workers (``--workers N``, ``[run] workers``, ``workers=``).

A search hands the driver batches of candidates (an NSGA-II generation, CIE's sweep, ABC's
initial colony, omp-search's trials of one step); :meth:`Evaluator.evaluate_many
<prunelab.searches.evaluator.Evaluator.evaluate_many>` sends the ones not in the log to a pool
of Ray actors and logs their results in the batch's order.  Each actor holds one
:class:`~prunelab.searches.evaluator.Candidates` (the unpruned model, the criterion's scores,
the data), shipped once through Ray's object store, and runs PyTorch on one thread, so a run
with 1 worker and one with N workers and the same seed evaluate the same candidates to the same
figures and choose the same widths.

Only accuracy work goes to the workers.  Latency during the search is *predicted* (the lookup
table), and the final measurement of the front runs in the driver's process, on the machine the
target is on, never beside the workers' load: start the driver where the target is.

Without ``workers`` nothing here is imported, nor is Ray (an optional extra:
``pip install prunelab[ray]``).  ``ray_address``: ``None`` starts a local Ray instance with
``workers`` CPUs; ``"auto"`` or ``"ray://host:10001"`` joins a running cluster.
"""

from __future__ import annotations

from ..errors import PrunelabError


class _Worker:
    """A Ray actor: one :class:`Candidates`, PyTorch on one thread."""

    def __init__(self, cands):
        import torch

        torch.set_num_threads(1)
        self.cands = cands

    def run(self, keep: dict, train_batches: int) -> dict:
        return self.cands.run(keep, "", train_batches)


class RayPool:
    """``workers`` Ray actors evaluating candidates; :meth:`map` yields results in order."""

    def __init__(self, workers: int, address: str | None, cands):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise PrunelabError("--workers needs Ray: pip install 'prunelab[ray]' (or leave "
                                "--workers out to evaluate in this process)") from None
        self.started = not ray.is_initialized()
        if self.started:
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
        ref = ray.put(cands)                         # model, scores and data: once
        actor = ray.remote(num_cpus=1)(_Worker)
        self.actors = [actor.remote(ref) for _ in range(workers)]
        self.pool = ActorPool(self.actors)
        self._ray = ray

    def map(self, jobs: list[tuple[dict, int]]):
        """Results of ``(keep, train_batches)`` jobs, in the jobs' order (a worker's
        :class:`PrunelabError`, e.g. from the user's ``eval_fn``, stays one line)."""
        it = self.pool.map(lambda a, job: a.run.remote(*job), jobs)
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
            self._ray.shutdown()
