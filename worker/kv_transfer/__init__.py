"""Moving a request's KV blocks between replicas: layouts, handles, leases and transports.
Only the torch-free parts are exported here, so the router can name a handle; the transports
are in worker.kv_transfer.transport."""

from worker.kv_transfer.handle import KVHandle, KVSource
from worker.kv_transfer.layout import KVLayout, KVLayoutMismatchError

__all__ = ["KVHandle", "KVLayout", "KVLayoutMismatchError", "KVSource"]
