"""Per-model load as this gateway sees it, sampled on a timer and written to the store.

The hot path touches one small counter object per request (``in_flight`` up and
down, ``requests`` up; ``held`` up and down for requests waiting for a first
ready replica). A sampler task reads the counters every ``sample_s`` and, every
``report_s``, writes a :class:`~mesh.types.LoadReport` to ``mesh/load/<gateway>``:
the average and peak in flight over the interval, the most requests held, the
requests finished, and when the model last saw a request. The scheduler's
autoscaler sums the fresh reports of all gateways.

    requests --> ModelCounter (in_flight, held, requests)
                      |  every sample_s
                      v
                 LoadReporter --every report_s--> store: mesh/load/<gateway> --> scheduler

An idle gateway writes one all-zero report and then stays silent (the scheduler
ignores reports older than a few intervals, which reads as "no load"), so an
idle mesh makes no store writes and wakes no watchers.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from mesh.store import Store, StoreError
from mesh.types import KEYS, LoadReport, ModelLoad, to_json

__all__ = ["ModelCounter", "LoadReporter"]

log = logging.getLogger(__name__)


class ModelCounter:
    """Live counters of one model, mutated on the hot path (single event loop, no locks)."""
    __slots__ = ("in_flight", "held", "requests")

    def __init__(self) -> None:
        self.in_flight = 0    # requests inside the gateway for this model (held ones included)
        self.held = 0         # of those, waiting for a first ready replica
        self.requests = 0     # requests started, ever


class _Acc:
    """What the sampler accumulated for one model since the last report."""
    __slots__ = ("sum", "n", "peak", "held", "requests_at_report", "requests_seen", "last_request_at")

    def __init__(self) -> None:
        self.sum = 0.0
        self.n = 0
        self.peak = 0
        self.held = 0
        self.requests_at_report = 0
        self.requests_seen = 0
        self.last_request_at = 0.0


class LoadReporter:
    def __init__(self, store: Store, gateway_id: str, known_models: Callable[[], Iterable[str]],
                 sample_s: float = 0.2, report_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.gateway_id = gateway_id
        self.known_models = known_models
        self.sample_s = sample_s
        self.report_s = report_s
        self.clock = clock
        self.counters: dict[str, ModelCounter] = {}
        self._acc: dict[str, _Acc] = {}
        self._task: asyncio.Task[None] | None = None
        self._idle_written = False
        self.last_report: LoadReport | None = None

    def counter(self, model: str) -> ModelCounter:
        c = self.counters.get(model)
        if c is None:
            c = self.counters[model] = ModelCounter()
        return c

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await self.store.delete(KEYS.load(self.gateway_id))
        except StoreError:
            pass

    def sample(self) -> None:
        """Read every counter once (the timer calls this every ``sample_s``)."""
        now = self.clock()
        for model, c in self.counters.items():
            a = self._acc.get(model)
            if a is None:  # counters start at zero, so every request counted is new
                a = self._acc[model] = _Acc()
            a.sum += c.in_flight
            a.n += 1
            a.peak = max(a.peak, c.in_flight)
            a.held = max(a.held, c.held)
            if c.requests != a.requests_seen or c.in_flight:
                a.last_request_at = now
                a.requests_seen = c.requests

    def build_report(self, interval_s: float) -> LoadReport:
        """Turn the samples since the last report into one, and start a new interval."""
        models = {}
        for model, a in self._acc.items():
            models[model] = ModelLoad(in_flight=round(a.sum / a.n, 3) if a.n else 0.0, peak_in_flight=a.peak,
                                      held=a.held, requests=a.requests_seen - a.requests_at_report,
                                      last_request_at=a.last_request_at)
            a.sum, a.n, a.peak, a.held, a.requests_at_report = 0.0, 0, 0, 0, a.requests_seen
        # Forget models that are gone and quiet, so unknown names cannot grow the tables.
        known = set(self.known_models())
        for model in [m for m, c in self.counters.items() if m not in known and not c.in_flight and not c.held]:
            del self.counters[model]
            self._acc.pop(model, None)
        return LoadReport(self.gateway_id, self.clock(), interval_s, models)

    async def report_once(self, interval_s: float) -> LoadReport | None:
        rep = self.build_report(interval_s)
        self.last_report = rep
        idle = all(m.in_flight == 0 and m.held == 0 and m.requests == 0 for m in rep.models.values())
        if idle and self._idle_written:
            return None
        await self.store.put(KEYS.load(self.gateway_id), to_json(rep))
        self._idle_written = idle
        return rep

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_report = loop.time() + self.report_s
        while True:
            await asyncio.sleep(self.sample_s)
            self.sample()
            if loop.time() >= next_report:
                next_report += self.report_s
                if next_report < loop.time():  # the loop fell behind: do not burst
                    next_report = loop.time() + self.report_s
                try:
                    await self.report_once(self.report_s)
                except StoreError as exc:
                    self._idle_written = False
                    log.warning("gateway %s cannot write its load report: %s", self.gateway_id, exc)
                except Exception:  # noqa: BLE001  (a bug here must not stop reporting, nor the gateway)
                    self._idle_written = False
                    log.exception("gateway %s: load report failed", self.gateway_id)
