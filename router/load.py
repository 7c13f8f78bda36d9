"""A replica's load as one router sees it: the replica's last report plus its own dispatches."""

from __future__ import annotations

from dataclasses import dataclass

from worker.load_report import LoadReport

UNKNOWN_FREE_BLOCKS = 1 << 62  # before a replica's first report: assume room

IDLE = LoadReport(
    num_waiting=0,
    prefill_tokens=0,
    num_running=0,
    kv_usage=0.0,
    num_free_blocks=UNKNOWN_FREE_BLOCKS,
    prefix_queries=0,
    prefix_hits=0,
)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A request this router sent, not yet visible in a load report."""

    request_id: str
    time: float
    prefill_tokens: int  # prompt tokens the replica is expected to compute (uncached)


class ReplicaLoad:
    """The last report is the truth; each dispatch since adds its uncached tokens to the queue
    at once, so that this router does not keep choosing a replica whose report is stale.

    The engine reports the prompt tokens it has yet to compute (waiting requests net of what
    its prefix cache already holds, and what running ones have left of their prefill),
    so a queue of requests that will mostly hit does not look longer than it is.

    Reconciliation: ``on_report`` takes the time the report was *taken* (the caller corrects
    for its transit). It reflects every request dispatched before that time less
    ``dispatch_lag_s`` (a dispatch's own transit to the replica), so those dispatches are
    dropped then: they are in its queue, or already prefilled, and must not count twice. A
    dispatch is also dropped when its first token or its end comes back through this router
    (``release``). Other routers' dispatches are not seen until the next report; that residual
    staleness is what the policy's sampling absorbs.
    """

    __slots__ = (
        "_pending",
        "dispatch_lag_s",
        "pending_tokens",
        "report",
        "report_time",
    )

    def __init__(self, dispatch_lag_s: float) -> None:
        """``dispatch_lag_s``: how long a dispatched request takes to reach the replica's queue;
        a report taken later than that after a dispatch already counts it."""
        self.dispatch_lag_s = dispatch_lag_s
        self.report = IDLE
        self.report_time = float("-inf")
        self._pending: dict[str, Dispatch] = {}  # in dispatch order
        self.pending_tokens = 0

    @property
    def queued_tokens(self) -> float:
        """Prompt tokens ahead of a new request that the replica still has to compute."""
        return self.report.prefill_tokens + self.pending_tokens

    @property
    def num_waiting(self) -> int:
        return self.report.num_waiting + len(self._pending)

    @property
    def num_requests(self) -> int:
        """Requests on the replica as this router knows: running, waiting and dispatched."""
        return self.report.num_running + self.num_waiting

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def on_report(self, report: LoadReport, now: float) -> None:
        self.report, self.report_time = report, now
        horizon = now - self.dispatch_lag_s
        done = []
        for request_id, dispatch in self._pending.items():
            if dispatch.time > horizon:
                break
            done.append(request_id)
        for request_id in done:
            self.pending_tokens -= self._pending.pop(request_id).prefill_tokens

    def dispatched(self, request_id: str, prefill_tokens: int, now: float) -> None:
        self.release(request_id)
        self._pending[request_id] = Dispatch(request_id, now, prefill_tokens)
        self.pending_tokens += prefill_tokens

    def release(self, request_id: str) -> None:
        dispatch = self._pending.pop(request_id, None)
        if dispatch is not None:
            self.pending_tokens -= dispatch.prefill_tokens

    def check_integrity(self) -> None:
        """Raise AssertionError unless the pending total matches the pending dispatches."""
        assert self.pending_tokens == sum(d.prefill_tokens for d in self._pending.values())
        times = [d.time for d in self._pending.values()]
        assert times == sorted(times), "pending dispatches are out of order"
