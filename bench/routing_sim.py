"""The closed-loop fleet behind bench.routing, in virtual time.

Each replica is the engine's own scheduler, KV cache manager and block pool (prefix cache, LRU
eviction, KV events, load reports exactly as the engine computes them); only the model is
replaced by a cost: a step takes ``step_s``, plus ``seq_s`` per sequence in it, plus
``prefill_s_per_token`` for every token it computes beyond one decode token per running
request. ``clients`` closed-loop clients each send their session's next turn once the previous
answer is complete and the turn's think time has passed, so up to ``clients`` requests are in
flight. A replica's KV events reach the router ``event_lag_s`` late; its load
report goes out every ``report_period_s`` and arrives ``report_lag_s`` late.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.routing_workloads import VOCAB, Session, Workload
from worker.kv_cache_manager import KVCacheManager
from worker.kv_events import KVEvent
from worker.load_report import LoadReport, PrefillRateMeter
from worker.request import Request, RequestStatus
from worker.sampling_params import SamplingParams
from worker.scheduler import Scheduler, SchedulerConfig, SchedulerOutput

BLOCK = 16


@dataclass(frozen=True)
class Speed:
    """What a replica's step costs; the two regimes the benchmark runs every workload in."""

    name: str
    prefill_s_per_token: float
    step_s: float  # every step
    seq_s: float  # every sequence in the step (reading its KV cache)
    output_tokens: int


PREFILL_BOUND = Speed("prefill_bound", 1 / 4000, step_s=0.01, seq_s=0.0005, output_tokens=32)
DECODE_BOUND = Speed("decode_bound", 1 / 40000, step_s=0.01, seq_s=0.0005, output_tokens=128)


@dataclass(frozen=True)
class FleetShape:
    replicas: int
    blocks_per_replica: int
    clients: int
    event_lag_s: float = 0.05
    report_period_s: float = 0.1
    report_lag_s: float = 0.02
    max_num_batched_tokens: int = 2048


class Policy:
    """Where each request goes; told what a router is told. Subclasses implement ``route`` and
    the hooks they need."""

    def route(self, request_id: str, tokens: list[int], now: float) -> int:
        raise NotImplementedError

    def on_events(self, replica: int, events: list[KVEvent], now: float) -> None:
        """The replica's KV events, ``event_lag_s`` after they happened."""

    def on_report(self, replica: int, report: LoadReport, taken: float) -> None:
        """The replica's load report, delivered ``report_lag_s`` after ``taken``."""

    def on_first_token(self, replica: int, request_id: str, now: float) -> None:
        """A request this policy routed streamed its first token back."""

    def on_finished(self, replica: int, request_id: str, now: float) -> None:
        """A request this policy routed finished."""


class SimReplica:
    """The engine's scheduling and KV bookkeeping, with a cost model in place of the model."""

    def __init__(self, num_blocks: int, speed: Speed, budget: int) -> None:
        self.kv = KVCacheManager(num_blocks, BLOCK)
        self.scheduler = Scheduler(SchedulerConfig(budget, max_num_seqs=256), self.kv)
        self.speed = speed
        self.batch: SchedulerOutput | None = None
        self.served = 0
        self.prefill_rate = PrefillRateMeter()  # measured as the engine measures it

    @property
    def busy(self) -> bool:
        return self.batch is not None

    def submit(self, request: Request) -> None:
        self.scheduler.add(request)
        self.served += 1

    def start_step(self) -> float | None:
        """Schedule a batch; its duration, or None if there is nothing to run."""
        batch = self.scheduler.schedule()
        if not batch.scheduled:
            return None
        self.batch = batch
        speed, computed = self.speed, batch.num_prefill_tokens
        duration = speed.step_s + len(batch.scheduled) * speed.seq_s
        duration += computed * speed.prefill_s_per_token
        self.prefill_rate.observe(computed, duration)
        return duration

    def end_step(self) -> tuple[list[Request], list[Request]]:
        """Apply the batch as Engine._process does; (requests that got their first token,
        requests that finished)."""
        assert self.batch is not None
        batch, self.batch = self.batch, None
        for item in batch.scheduled:
            if item.is_current:
                self.kv.cache_blocks(item.request)
        first, done = [], []
        for item in batch.scheduled:
            request = item.request
            if not (item.samples and item.is_current):
                continue
            request.append_output_token(_output_token(request))
            if request.num_output_tokens == 1:
                first.append(request)
            if request.num_output_tokens >= request.params.max_tokens:
                self.scheduler.finish(request, RequestStatus.FINISHED_LENGTH)
                done.append(request)
        return first, done

    def load_report(self) -> LoadReport:
        scheduler = self.scheduler
        rate = self.prefill_rate.tokens_per_s
        return self.kv.load_report(scheduler.waiting, scheduler.running, rate)


def _output_token(request: Request) -> int:
    return hash((request.request_id, request.num_tokens)) % VOCAB


@dataclass
class Result:
    hit_tokens: int = 0
    prompt_tokens: int = 0
    # After the cold start: the first wave of requests (one per client, sent at once to empty
    # caches) misses and queues the same under every policy, and would be every p99.
    ttfts: list[float] = field(default_factory=list)
    completed: int = 0
    makespan_s: float = 0.0
    served: list[int] = field(default_factory=list)
    preemptions: int = 0

    def figures(self) -> dict[str, float]:
        ttfts = sorted(self.ttfts)
        return {
            "hit_rate": self.hit_tokens / max(1, self.prompt_tokens),
            "load_max_over_mean": max(self.served) / statistics.mean(self.served),
            "ttft_p50_s": ttfts[len(ttfts) // 2],
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))],
            "rps": self.completed / self.makespan_s,
        }


@dataclass
class _Client:
    session: Session = field(default_factory=list)
    turn: int = 0
    history: list[int] = field(default_factory=list)
    thought: bool = False  # the current turn's think time has passed


def simulate(
    workload: Workload,
    speed: Speed,
    shape: FleetShape,
    make_policy: Callable[[list[SimReplica]], Policy],
) -> Result:
    """Run every session of ``workload`` through a fresh fleet routed by ``make_policy``."""
    replicas = [
        SimReplica(shape.blocks_per_replica, speed, shape.max_num_batched_tokens)
        for _ in range(shape.replicas)
    ]
    policy = make_policy(replicas)
    sessions = deque(workload.sessions)
    heap: list[tuple[float, int, Callable[[float], None]]] = []
    order = itertools.count()
    result = Result()
    arrivals: dict[str, float] = {}
    owners: dict[str, _Client] = {}
    ids = itertools.count()
    unfinished = [0]

    def at(time: float, action: Callable[[float], None]) -> None:
        heapq.heappush(heap, (time, next(order), action))

    def send(client: _Client, now: float) -> None:
        if client.turn == len(client.session):
            if not sessions:
                return
            client.session, client.turn, client.history = sessions.popleft(), 0, []
        turn = client.session[client.turn]
        if turn.think_s and not client.thought:
            client.thought = True
            at(now + turn.think_s, lambda t: send(client, t))
            return
        client.thought = False
        prompt = (client.history if turn.history else []) + list(turn.message)
        request_id = f"q{next(ids)}"
        replica = policy.route(request_id, prompt, now)
        params = SamplingParams(max_tokens=speed.output_tokens, ignore_eos=True)
        replicas[replica].submit(Request(request_id, prompt, params, BLOCK))
        arrivals[request_id], owners[request_id] = now, client
        unfinished[0] += 1
        start(replica, now)

    def start(r: int, now: float) -> None:
        if replicas[r].busy:
            return
        duration = replicas[r].start_step()
        if duration is not None:
            at(now + duration, lambda t: finish(r, t))

    def finish(r: int, now: float) -> None:
        replica = replicas[r]
        first, done = replica.end_step()
        events = replica.kv.pool.events.drain()
        if events:
            at(now + shape.event_lag_s, lambda t: policy.on_events(r, events, t))
        for request in first:
            if int(request.request_id[1:]) >= shape.clients:  # past the cold start
                result.ttfts.append(now - arrivals[request.request_id])
            result.hit_tokens += request.num_cached_tokens
            result.prompt_tokens += request.num_prompt_tokens
            policy.on_first_token(r, request.request_id, now)
        for request in done:
            policy.on_finished(r, request.request_id, now)
            result.completed += 1
            result.makespan_s = now
            unfinished[0] -= 1
            client = owners.pop(request.request_id)
            client.history = request.all_token_ids
            client.turn += 1
            send(client, now)
        start(r, now)

    def deliver(r: int, report: LoadReport, taken: float, now: float) -> None:
        policy.on_report(r, report, taken)

    def report(now: float) -> None:
        for r, replica in enumerate(replicas):
            taken = functools.partial(deliver, r, replica.load_report(), now)
            at(now + shape.report_lag_s, taken)
        if sessions or unfinished[0]:
            at(now + shape.report_period_s, report)

    clients = [_Client() for _ in range(shape.clients)]
    for client in clients:
        send(client, 0.0)
    report(0.0)
    while heap:
        now, _, action = heapq.heappop(heap)
        action(now)
    assert not sessions and unfinished[0] == 0, "every session runs to its end"
    for replica in replicas:
        replica.kv.check_integrity()
        assert replica.kv.pool.num_free == replica.kv.pool.num_blocks
    result.served = [replica.served for replica in replicas]
    result.preemptions = sum(replica.scheduler.num_preemptions for replica in replicas)
    return result
