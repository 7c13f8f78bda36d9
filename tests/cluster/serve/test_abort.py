"""Abort reaches a request whichever front door receives it: one that does not stream the
request asks every replica, and the one running it ends the stream with reason ABORT."""

from __future__ import annotations

from cluster.front_door import FrontDoorThread
from protos.kvfleet.v1 import generation_pb2 as pb
from router.client import GenerationClient
from tests.cluster.serve.conftest import Fleet
from tests.cluster.serve.routing_helpers import token_prompt
from tests.net import free_port

LONG = {"max_tokens": 1500, "temperature": 0.0, "ignore_eos": True}


def test_an_abort_sent_to_another_front_door_reaches_the_request(
    client: GenerationClient, fleet: Fleet
) -> None:
    other = FrontDoorThread(fleet.config.app_name, port=free_port())
    try:
        stream = iter(client.generate(token_prompt(5000, 40), request_id="far-away", **LONG))
        next(stream)  # running now, streamed through the first front door
        with GenerationClient(other.target) as second:
            assert second.abort("far-away")
            assert not second.abort("no-such-request")
        responses = list(stream)
        assert responses[-1].finished.reason == pb.FINISH_REASON_ABORT
        assert responses[-1].finished.usage.completion_tokens < 1500
    finally:
        other.stop()
    fleet.wait_until_idle()
