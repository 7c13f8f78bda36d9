"""Several sequences over one prompt: parallel samples equal separate seeded requests, the prompt's
blocks are held once, and every fork, drop, preemption and abort leaves the cache whole."""

from __future__ import annotations

import random
from pathlib import Path

from tests.worker.engine_helpers import make_engine
from tests.worker.groups_helpers import run_requests, sequences_of
from worker.kv_cache_manager import KVCacheManager
from worker.request import Request
from worker.sampling_params import SamplingParams
from worker.scheduler import SchedulerOutput

PROMPT = "Four samples of one prompt share its blocks and diverge after it"
OTHERS: dict[str, tuple[list[int] | str, SamplingParams]] = {
    f"other{i}": (f"A request of its own, number {i}", SamplingParams(max_tokens=12, seed=i))
    for i in range(3)
}


def _long_prompt(length: int) -> list[int]:
    return [random.Random(length).randrange(2, 8000) for _ in range(length)]


def test_four_samples_equal_four_separate_seeded_requests(demo_model_dir: Path) -> None:
    group = SamplingParams(max_tokens=24, temperature=0.9, seed=11, n=4)
    outputs = run_requests(make_engine(demo_model_dir), {"g": (PROMPT, group), **OTHERS})
    got = sequences_of(outputs, "g")
    separate = {
        f"s{i}": (PROMPT, SamplingParams(max_tokens=24, temperature=0.9, seed=11 + i))
        for i in range(4)
    }
    want = run_requests(make_engine(demo_model_dir), {**separate, **OTHERS})
    assert [out.token_ids for out in got] == [
        sequences_of(want, f"s{i}")[0].token_ids for i in range(4)
    ]
    assert len({tuple(out.token_ids) for out in got}) == 4  # four different samples
    assert [out.index for out in got] == [0, 1, 2, 3]
    # Only the request's very last output ends its stream.
    finals = [out for out in outputs if out.request_id == "g" and out.finish_reason]
    assert [out.finished for out in finals] == [False, False, False, True]


def test_eight_beams_hold_a_long_prompts_blocks_once(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir)
    prompt = _long_prompt(1000)  # 62 full blocks of 16 and a partly filled one
    params = SamplingParams(max_tokens=6, temperature=0.0, beam_width=8, ignore_eos=True)
    engine.add_request(engine.make_request("beams", prompt, params))
    peak = 0
    while engine.has_unfinished():
        engine.step()
        engine.check_integrity()
        peak = max(peak, engine.num_blocks - engine.kv.pool.num_free)
    # The prompt's 63 blocks once, and each beam's own copy of the last one (then one more
    # block each when its tokens fill it); eight separate requests would hold 8 x 63.
    assert peak <= 63 + 2 * 8
    assert engine.kv.pool.num_free == engine.num_blocks


def test_preempted_groups_resume_with_the_same_sequences(demo_model_dir: Path) -> None:
    beams = SamplingParams(max_tokens=16, temperature=0.0, beam_width=4, n=2, ignore_eos=True)
    samples = SamplingParams(max_tokens=16, temperature=0.8, seed=3, n=3, ignore_eos=True)
    requests: dict[str, tuple[list[int] | str, SamplingParams]] = {
        "beams": (_long_prompt(60), beams),
        "samples": (_long_prompt(70), samples),
        "long": (_long_prompt(90), SamplingParams(max_tokens=16, temperature=0.0)),
    }
    roomy = run_requests(make_engine(demo_model_dir), requests)
    tight = make_engine(demo_model_dir, num_kv_blocks=24, enable_prefix_caching=False)
    scheduler = tight.scheduler
    schedule = scheduler.schedule
    partial: list[str] = []

    def whole_groups_only(max_seqs: int | None = None) -> SchedulerOutput:
        """Schedule, noting any group preempted while a sequence of it still runs."""
        out = schedule(max_seqs)
        preempted = {r.group_id for r in out.preempted if r.group_id is not None}
        partial.extend(r.request_id for r in scheduler.running if r.group_id in preempted)
        return out

    scheduler.schedule = whole_groups_only  # type: ignore[method-assign]
    squeezed = run_requests(tight, requests)
    assert scheduler.num_preemptions > 0 and partial == []
    for rid in requests:
        assert [o.token_ids for o in sequences_of(squeezed, rid)] == [
            o.token_ids for o in sequences_of(roomy, rid)
        ]
    assert tight.kv.pool.num_free == tight.num_blocks


def test_aborting_a_group_ends_every_sequence_and_frees_its_blocks(demo_model_dir: Path) -> None:
    engine = make_engine(demo_model_dir)
    beams = SamplingParams(max_tokens=40, temperature=0.0, beam_width=3, ignore_eos=True)
    samples = SamplingParams(max_tokens=40, temperature=0.8, n=3, ignore_eos=True)
    engine.add_request(engine.make_request("beams", PROMPT, beams))
    engine.add_request(engine.make_request("samples", PROMPT, samples))
    for _ in range(5):
        engine.step()
        engine.check_integrity()
    assert len(engine.scheduler.running) == 6
    for rid in ("beams", "samples"):
        final = engine.abort(rid)
        assert final is not None and final.finished and final.finish_reason == "abort"
        engine.check_integrity()
    assert not engine.has_unfinished()
    assert engine.kv.pool.num_free == engine.num_blocks


def test_a_fork_shares_blocks_until_it_writes_into_the_shared_partial_one() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    parent = Request("p", list(range(6)), SamplingParams(), block_size=4)
    assert kv.allocate_slots(parent, 6)  # blocks [a (4 tokens), b (2 tokens)]
    parent.num_computed_tokens = 6
    child = parent.fork("c", 6, SamplingParams())
    child.num_computed_tokens = 6
    kv.fork(parent, child)
    assert kv.block_ids("c") == kv.block_ids("p")
    kv.check_integrity()
    assert kv.allocate_slots(child, 1)  # token 6 goes into b, which the parent still reads
    (source, copy) = kv.take_copies()[0]
    assert source == kv.block_ids("p")[1] and kv.block_ids("c") == [kv.block_ids("p")[0], copy]
    assert kv.allocate_slots(parent, 1)  # b is the parent's alone now: written in place
    assert kv.take_copies() == []
    kv.check_integrity()
    kv.free(parent)
    kv.free(child)
    assert kv.pool.num_free == 8
