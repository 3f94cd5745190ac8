"""Dynamic batching: concurrent prediction requests for the same models and mode share one onnxruntime call.

Both transports (``/v1/predict`` and ``/v2/models/{name}/infer``) hand the data plane a ``Planned``
request — already validated and resolved, so one client's bad input never reaches a shared call.
Requests with the same ``Planned.batch_key`` (the same pinned versions, the same mode name, seed and
quantile levels) that arrive within ``GALAXYPAINT_BATCH_WINDOW_MS`` of the first one are concatenated
into one ``GalaxyModel.predict`` call (``dataplane.compute``) run in the thread pool, then split back:
each request keeps its own halo ids, so its answer equals the one it would get alone (draws depend
only on (seed, id); every other step is per halo).  A queue reaching ``BATCH_MAX_ROWS`` halos runs at
once; requests of more than ``BATCH_BYPASS_ROWS`` halos are run on their own.  With ``BATCH_EAGER`` (the
default) a request finding no call of its key running is run at once, and the ones arriving meanwhile
are run together as soon as that call returns (or the window passes): no added latency for a lone
client, larger batches as the load grows (as Triton's dynamic batcher with a zero queue delay).

Why: each onnxruntime call has a fixed cost (thread hand-off, session bookkeeping, intra-op threads
spinning up), so fifty single-halo calls cost far more than one call of fifty halos.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from app.api.dataplane import DataPlaneError, ModelStore, Planned, Prediction, compute, compute_one
from app.api.observability import Metrics


@dataclass
class _Queue:
    """Requests of one batch key waiting to run."""

    items: list[tuple[Planned, asyncio.Future]] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Merges concurrent ``Planned`` requests into shared ``dataplane.compute`` calls (one event loop)."""

    def __init__(self, store: ModelStore, metrics: Metrics, window_ms: float = 1.0, max_rows: int = 4096,
                 bypass_rows: int = 1024, eager: bool = True) -> None:
        self.store = store
        self.metrics = metrics
        self.window_s = window_ms / 1e3
        self.max_rows = max_rows
        self.bypass_rows = min(bypass_rows, max_rows)  # a request never exceeds a batch on its own
        self.eager = eager
        self._queues: dict[tuple, _Queue] = {}
        self._running: dict[tuple, int] = {}
        self._tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    def takes(self, n: int) -> bool:
        """Whether a request of ``n`` halos is queued (else it runs on its own)."""
        return self.enabled and n <= self.bypass_rows

    async def predict(self, n: int, make_plan: Callable[[], Planned]) -> Prediction:
        """The answer to a request of ``n`` halos planned by ``make_plan`` (validation and resolution, which
        raise ``DataPlaneError``).  A queued request is planned here, on the event loop: it is small (at most
        ``bypass_rows`` halos) and resolutions are cached (a miss is one SQLite read, after a registry change
        only).  A larger one is planned and computed in the thread pool."""
        if not self.takes(n):
            return await run_in_threadpool(lambda: compute_one(self.store, make_plan()))
        return await self.submit(make_plan())

    async def submit(self, planned: Planned) -> Prediction:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        key = planned.batch_key
        queue = self._queues.get(key)
        if queue is not None and queue.rows + len(planned) > self.max_rows:
            self._dispatch(key)  # full: run what waits, start a new queue
            queue = None
        if queue is None:
            queue = self._queues[key] = _Queue()
            idle = self.eager and not self._running.get(key)
            if not idle:
                queue.timer = loop.call_later(self.window_s, self._dispatch, key)
        else:
            idle = False
        queue.items.append((planned, future))
        queue.rows += len(planned)
        if idle or queue.rows >= self.max_rows:
            self._dispatch(key)
        answer = await future
        if isinstance(answer, DataPlaneError):
            raise answer
        return answer

    def _dispatch(self, key: tuple) -> None:
        queue = self._queues.pop(key, None)
        if queue is None:
            return
        if queue.timer is not None:
            queue.timer.cancel()
        self._running[key] = self._running.get(key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._run(key, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: tuple, queue: _Queue) -> None:
        plans = [p for p, _ in queue.items]
        self.metrics.batches.inc()
        self.metrics.batch_requests.observe(len(plans))
        if len(plans) > 1:
            self.metrics.batches_merged.inc()
        try:
            answers = await run_in_threadpool(compute, self.store, plans)
        except Exception as exc:  # a failure of the shared call (e.g. an artefact unloadable) is every member's
            for _, future in queue.items:
                if not future.done():  # a client that went away cancelled its future
                    future.set_exception(exc)
        except BaseException:  # the server is shutting down
            for _, future in queue.items:
                future.cancel()
            raise
        else:
            for (_, future), answer in zip(queue.items, answers):
                if not future.done():
                    future.set_result(answer)
        finally:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]
            if self.eager and key in self._queues and not self._running.get(key):
                self._dispatch(key)  # requests that arrived while this call ran go now, not at the window's end
