"""Open-loop load against a gRPC front door (`kvfleet bench`): requests arrive at a given rate,
Poisson or evenly spaced, at most ``concurrency`` in flight (the rest wait, and their wait counts
in their latency, as a client's would), on a random or a shared-prefix workload. Each request's
time to first token, gaps between tokens and end-to-end latency are kept, measured from its
scheduled arrival."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from router.client import GenerationClient


@dataclass(frozen=True)
class Workload:
    """``groups`` x ``prompts_per_group`` prompts of ``prefix_len`` shared tokens (0: none)
    plus ``input_len`` tokens of their own, each asking for ``output_len`` tokens."""

    input_len: int
    output_len: int
    prefix_len: int = 0
    groups: int = 1
    prompts_per_group: int = 100

    @property
    def num_requests(self) -> int:
        return self.groups * self.prompts_per_group

    def prompts(self, vocab_size: int, seed: int = 0) -> list[list[int]]:
        """Token-id prompts, shuffled; ids avoid the first 100 (special tokens live there)."""
        rng = random.Random(seed)

        def tokens(n: int) -> list[int]:
            return [rng.randrange(100, vocab_size) for _ in range(n)]

        prefixes = [tokens(self.prefix_len) for _ in range(self.groups)]
        batch = [
            p + tokens(self.input_len) for p in prefixes for _ in range(self.prompts_per_group)
        ]
        rng.shuffle(batch)
        return batch


@dataclass
class Timing:
    """One request as its client saw it: times in seconds from ``sent_at`` (time.monotonic:
    its scheduled arrival in an open loop, its sending in a closed one)."""

    sent_at: float
    tokens_asked: int
    prompt_tokens: int = 0  # as the server counted them (its final message)
    ttft_s: float | None = None  # None: no token arrived
    e2e_s: float | None = None  # None: it did not finish
    itl_s: list[float] = field(default_factory=list)  # an output of k tokens counts k gaps
    output_tokens: int = 0
    replica: str = ""  # the replica that served it, when routed
    error: str = ""  # the gRPC status, when it failed

    @property
    def finished_at(self) -> float | None:
        return None if self.e2e_s is None else self.sent_at + self.e2e_s

    @property
    def answered(self) -> bool:
        """Finished without error, with every token asked for (ignore_eos requests)."""
        return not self.error and self.e2e_s is not None and self.output_tokens == self.tokens_asked


def measure(
    client: GenerationClient, prompt: str | list[int], max_tokens: int, sent_at: float
) -> Timing:
    """Send one ignore_eos request and time its stream."""
    timing, last = Timing(sent_at, max_tokens), sent_at
    try:
        for response in client.generate(prompt, max_tokens=max_tokens, ignore_eos=True):
            now, count = time.monotonic(), len(response.token_ids)
            if count:
                if timing.ttft_s is None:
                    timing.ttft_s = now - sent_at
                else:
                    timing.itl_s += [(now - last) / count] * count
                last = now
                timing.output_tokens += count
            if response.HasField("finished"):
                timing.prompt_tokens = response.finished.usage.prompt_tokens
                timing.replica = response.finished.replica
        timing.e2e_s = time.monotonic() - sent_at
    except grpc.RpcError as exc:
        timing.error = exc.code().name
    return timing


def arrival_times(rate: float, count: int, poisson: bool, seed: int = 0) -> list[float]:
    """Offsets from the start at which ``count`` requests arrive at ``rate`` per second."""
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate) if poisson else 1.0 / rate
    return times


def run_load(
    target: str,
    prompts: list[list[int]],
    output_len: int,
    rate: float,
    concurrency: int,
    poisson: bool = True,
    progress: Callable[[int], None] = lambda done: None,
    seed: int = 0,
    token: str | None = None,
) -> tuple[list[Timing], float]:
    """Every prompt once, arriving at ``rate``; the timings and the run's duration."""
    arrivals = arrival_times(rate, len(prompts), poisson, seed)
    timings: list[Timing | None] = [None] * len(prompts)
    finished = 0
    lock = threading.Lock()
    with GenerationClient(target, token=token) as client, ThreadPoolExecutor(concurrency) as pool:
        start = time.monotonic()

        def one(i: int) -> None:
            nonlocal finished
            timings[i] = measure(client, prompts[i], output_len, start + arrivals[i])
            with lock:
                finished += 1
                progress(finished)

        for i, offset in enumerate(arrivals):
            delay = start + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    return [t for t in timings if t is not None], time.monotonic() - start
