"""The engine's step loop, the same on a thread of the serving process and in a process of its
own: apply the commands given so far, run one step, hand its outputs on as one batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from worker.engine import Engine
from worker.errors import KVFleetError
from worker.messages import GenerationRequest, RequestOutput


@dataclass(frozen=True, slots=True)
class Add:
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class Abort:
    engine_id: str


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``fn(engine)`` between two steps; its result goes back under ``call_id``."""

    fn: Callable[[Engine], Any]
    call_id: int


Command = Add | Abort | Call


class Shutdown(Exception):
    """Raised by a command source when the loop must stop."""


class CommandSource(Protocol):
    def get(self, timeout_s: float | None) -> Command | None:
        """The next command, waiting up to ``timeout_s`` for one (None: for ever); None if
        none came. Raises Shutdown when the loop must stop."""


class Sink(Protocol):
    def outputs(self, outputs: list[RequestOutput]) -> None:
        """One step's outputs (or one command's), in order."""

    def result(self, call_id: int, value: Any, error: BaseException | None) -> None:
        """What a Call returned or raised."""


def run(engine: Engine, commands: CommandSource, sink: Sink) -> None:
    """Until Shutdown: apply every queued command (waiting for one while the engine is idle,
    but not past the end of a KV lease), then step. Anything else the step raises
    propagates: the caller fails every stream."""
    while True:
        wait_s = engine.idle_wait_s()
        while (command := commands.get(wait_s)) is not None:
            apply(engine, command, sink)
            wait_s = 0.0
        engine.expire_leases()
        if engine.has_unfinished():
            outputs = engine.step()
            if outputs:
                sink.outputs(outputs)


def apply(engine: Engine, command: Command, sink: Sink) -> None:
    if isinstance(command, Call):
        try:
            value = command.fn(engine)
        except Exception as exc:  # the caller's to handle, not the step loop's
            sink.result(command.call_id, None, exc)
        else:
            sink.result(command.call_id, value, None)
    elif isinstance(command, Add):
        try:
            engine.add_request(command.request)
        except KVFleetError as exc:
            sink.outputs([error_output(command.request.request_id, str(exc), exc)])
    else:
        final = engine.abort(command.engine_id)
        if final is not None:
            sink.outputs([final])


def error_output(
    request_id: str, message: str, failure: KVFleetError | None = None
) -> RequestOutput:
    return RequestOutput(
        request_id, [], "", None, finished=True, finish_reason="error", error=message,
        failure=failure,
    )  # fmt: skip
