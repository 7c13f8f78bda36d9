"""The live request router of each application's deployment in this process. Serve builds
request routers itself (from a copy of their class pickled by value), so a front door finds
its deployment's here, for the metrics and for disaggregation's plan; a module of its own, so
that it is shared, never pickled."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cluster.request_router import PrefixAwareRequestRouter

LIVE: weakref.WeakValueDictionary[str, PrefixAwareRequestRouter] = weakref.WeakValueDictionary()


def key(app_name: str, deployment: str) -> str:
    return f"{app_name}#{deployment}"
