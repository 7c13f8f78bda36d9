"""Real front doors for tests (router/front_doors.py): the gRPC server and, when asked, the HTTP
one, on free loopback ports over one LocalBackend (a real engine on the demo model). They run
their own event loop on a thread so tests stay synchronous."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from cluster.local_backend import LocalBackend
from router.auth import TokenAuth
from router.front_doors import FrontDoors, open_front_doors
from router.http_api import ChatTemplate, HTTPConfig
from router.tls import TLSConfig
from tests.net import free_port
from worker.engine import Engine

T = TypeVar("T")


class RunningServer:
    """Started servers, their backend and the engine behind it, for tests to inspect."""

    def __init__(
        self,
        backend: LocalBackend,
        http: bool = False,
        chat_template: ChatTemplate | None = None,
        http_config: HTTPConfig | None = None,
        tls: TLSConfig | None = None,
        auth: TokenAuth | None = None,
    ) -> None:
        self.backend = backend
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.doors: FrontDoors = self.run(
            open_front_doors(
                backend,
                grpc_port=self.port,
                http_port=0 if http else None,
                chat_template=chat_template,
                http_config=http_config,
                tls=tls,
                auth=auth,
            )
        )

    @property
    def engine(self) -> Engine:
        return self.backend.engine.engine

    @property
    def base_url(self) -> str:
        assert self.doors.http is not None, "started without HTTP"
        return f"http://127.0.0.1:{self.doors.http.port}"

    def wait_until_idle(self, timeout_s: float = 3.0) -> None:
        """Every request gone and every KV block back in the pool. The engine is only read once
        its thread has nothing left to do."""
        engine = self.engine
        end = time.monotonic() + timeout_s
        while engine.has_unfinished() or engine.kv.pool.num_free != engine.num_blocks:
            assert time.monotonic() < end, "requests or KV blocks still held"
            time.sleep(0.01)
        engine.check_integrity()

    def close(self) -> None:
        self.run(self.doors.stop(grace_s=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.backend.engine.shutdown()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the servers' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)
