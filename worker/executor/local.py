"""The in-process executor, for tensor_parallel_size = pipeline_parallel_size = 1."""

from __future__ import annotations

import queue
import threading
import weakref
from collections import deque
from collections.abc import Sequence

from worker.errors import WorkerFailedError
from worker.executor.base import Executor
from worker.kv_transfer import KVSource
from worker.kv_transfer.transport import KVTransferError, KVTransport, make_transport
from worker.model_runner import ModelRunner
from worker.sampler import RowTokens
from worker.step_input import StepInput


class InProcessExecutor(Executor):
    """A single rank whose runner (and KV cache) lives in this process."""

    runner: ModelRunner
    kv_transport: KVTransport | None = None

    def open_kv_transport(self, kind: str, agent_name: str) -> bool:
        self.kv_transport = make_transport(kind, self.runner.kv_caches, agent_name)
        return self.kv_transport.holds_blocks

    def export_kv(self, block_ids: Sequence[int], key: str) -> list[KVSource]:
        return [self._transport().export(block_ids, key)]

    def release_export(self, key: str) -> None:
        if self.kv_transport is not None:
            self.kv_transport.release(key)

    def fetch_kv(
        self,
        sources: Sequence[KVSource],
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        if len(sources) != 1:
            raise KVTransferError(f"the source has {len(sources)} ranks, this replica 1")
        self._transport().fetch(sources[0], src_block_ids, dst_block_ids, timeout_s)

    def _transport(self) -> KVTransport:
        if self.kv_transport is None:
            raise KVTransferError("no KV transport is open")
        return self.kv_transport

    def close_kv_transport(self) -> None:
        if self.kv_transport is not None:
            self.kv_transport.close()
            self.kv_transport = None


class LocalExecutor(InProcessExecutor):
    """Runs each step at submission, in the caller's thread."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self._done: deque[list[RowTokens]] = deque()

    def submit(self, step: StepInput) -> None:
        sampled = self.runner.execute(step)
        assert sampled is not None, "a single rank always samples"
        self._done.append(sampled)

    def receive(self) -> list[RowTokens]:
        return self._done.popleft()

    def shutdown(self) -> None:
        self._done.clear()
        self.close_kv_transport()


class OverlappingExecutor(InProcessExecutor):
    """Runs steps, in submission order, on a thread of its own, so that the engine schedules
    and prepares step N+1 and processes step N-1's outputs while step N runs (torch releases
    the GIL in its kernels). Two steps are in flight: the second is scheduled before the
    first's tokens are known, and its inputs that wait on them are filled in by the runner
    (StepInput.pending_inputs), which has them by then because it runs the steps in order.

        engine:    schedule N+1 | process N-1 | schedule N+2 | process N | ...
        executor:  ......... step N ......... | ......... step N+1 .......
    """

    max_in_flight = 2
    runs_ahead = True

    def __init__(self, runner: ModelRunner, step_timeout_s: float) -> None:
        self.runner = runner
        self.step_timeout_s = step_timeout_s
        self._steps: queue.SimpleQueue[StepInput | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[list[RowTokens] | BaseException] = queue.SimpleQueue()
        # The thread holds the runner only weakly, so an engine that is dropped without a
        # shutdown is still collected (and __del__ stops the thread).
        self._thread = threading.Thread(
            target=_run_steps,
            args=(weakref.ref(runner), self._steps, self._results),
            name="kvfleet-step",
            daemon=True,
        )
        self._thread.start()

    def submit(self, step: StepInput) -> None:
        self._steps.put(step)

    def receive(self) -> list[RowTokens]:
        """The oldest step's tokens; re-raises what running it raised, and raises
        WorkerFailedError if it has not finished within ``step_timeout_s``."""
        try:
            result = self._results.get(timeout=self.step_timeout_s)
        except queue.Empty:
            raise WorkerFailedError(
                f"a step has not finished within {self.step_timeout_s} s"
            ) from None
        if isinstance(result, BaseException):
            raise result
        return result

    def shutdown(self) -> None:
        self._steps.put(None)
        self._thread.join(timeout=30)
        self.close_kv_transport()

    def __del__(self) -> None:
        self._steps.put(None)


def _run_steps(
    runner_ref: weakref.ref[ModelRunner],
    steps: queue.SimpleQueue[StepInput | None],
    results: queue.SimpleQueue[list[RowTokens] | BaseException],
) -> None:
    while (step := steps.get()) is not None:
        runner = runner_ref()
        if runner is None:
            return
        try:
            sampled = runner.execute(step)
            assert sampled is not None, "a single rank always samples"
            results.put(sampled)
        except BaseException as exc:  # the engine's to raise, from receive()
            results.put(exc)
        del runner
