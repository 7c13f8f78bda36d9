"""Random submit / abort / step sequences keep the block pool consistent and end fully free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.worker.engine_helpers import make_engine
from worker.engine import Engine
from worker.sampling_params import SamplingParams

_ENGINES: dict[tuple[Path, str], Engine] = {}
# Speculation adds drafts' KV writes past a request's tokens, dropped drafts when blocks run
# short, and rolled-back positions: the same invariants must hold.
_SPECULATION: dict[str, dict[str, Any]] = {
    "plain": {},
    "prompt_lookup": {"speculative_method": "prompt_lookup", "prompt_lookup_min": 1},
    "draft_model": {"speculative_method": "draft_model"},
}

op = st.one_of(
    st.tuples(
        st.just("submit"),
        st.lists(st.integers(3, 40), min_size=1, max_size=70),
        st.integers(1, 12),
        st.sampled_from([None, "salt"]),
    ),
    st.tuples(st.just("abort"), st.integers(0, 30)),
    st.tuples(st.just("step"), st.integers(1, 4)),
)


@pytest.mark.parametrize("speculation", list(_SPECULATION))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(op, min_size=1, max_size=30))
def test_random_workload_keeps_integrity_and_frees_everything(
    demo_model_dir: Path, speculation: str, ops: list[tuple]
) -> None:
    # A small cache and budget so that preemption, chunking and eviction all happen.
    key = (demo_model_dir, speculation)
    overrides = dict(_SPECULATION[speculation])
    if speculation == "draft_model":
        overrides["draft_model"] = demo_model_dir
    engine = _ENGINES.get(key) or make_engine(
        demo_model_dir,
        num_kv_blocks=12,
        max_num_batched_tokens=24,
        max_num_seqs=4,
        block_size=8,
        **overrides,
    )
    _ENGINES[key] = engine
    submitted = 0
    for action, *args in ops:
        if action == "submit":
            tokens, max_tokens, salt = args
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            engine.add_request(engine.make_request(f"r{submitted}", tokens, params, salt))
            submitted += 1
        elif action == "abort":
            engine.abort(f"r{args[0]}")
        else:
            for _ in range(args[0]):
                engine.step()
        engine.check_integrity()
    while engine.has_unfinished():
        engine.step()
        engine.check_integrity()
    assert engine.kv.pool.num_free == engine.num_blocks
