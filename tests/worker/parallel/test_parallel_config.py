"""ParallelConfig rejects every split a model cannot take, with a message saying why, and
splits layers into contiguous stages."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.model import ModelConfig
from worker.parallel import ParallelConfig, ParallelState

BASE: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ModelConfig:
    path = tmp_path_factory.mktemp("config")
    (path / "config.json").write_text(json.dumps(BASE))
    return ModelConfig.from_dir(path)


@pytest.mark.parametrize(
    ("tp", "pp", "split"),
    [(1, 1, None), (2, 1, None), (8, 1, None), (4, 1, None), (2, 2, None), (1, 4, (1, 1, 1, 1))],
)
def test_valid_splits_pass(model: ModelConfig, tp: int, pp: int, split: Any) -> None:
    ParallelConfig(tp, pp, split).validate(model)


@pytest.mark.parametrize(
    ("changes", "tp", "pp", "split", "message"),
    [
        ({}, 3, 1, None, r"num_attention_heads 8 is not divisible by tensor_parallel_size 3"),
        (
            {"num_attention_heads": 12, "num_key_value_heads": 3},
            4,
            1,
            None,
            r"num_key_value_heads 3 and tensor_parallel_size 4 .*one must be a multiple",
        ),
        ({"intermediate_size": 100}, 8, 1, None, r"intermediate_size 100 is not divisible"),
        ({}, 1, 5, None, r"pipeline_parallel_size 5 exceeds num_hidden_layers 4"),
        ({}, 1, 2, (1, 2), r"layer_split \(1, 2\) sums to 3 but the model has 4 layers"),
    ],
)
def test_impossible_split_of_the_model_says_why(
    model: ModelConfig,
    changes: dict[str, int],
    tp: int,
    pp: int,
    split: tuple[int, ...] | None,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        ParallelConfig(tp, pp, split).validate(dataclasses.replace(model, **changes))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tensor_parallel_size": 0}, r"tensor_parallel_size must be a positive integer, got 0"),
        ({"pipeline_parallel_size": -1}, r"pipeline_parallel_size must be a positive integer"),
        (
            {"pipeline_parallel_size": 2, "layer_split": (4,)},
            r"layer_split \(4,\) has 1 entries but pipeline_parallel_size is 2",
        ),
        (
            {"pipeline_parallel_size": 2, "layer_split": (4, 0)},
            r"every stage needs a positive whole number of layers",
        ),
    ],
)
def test_malformed_config_is_rejected_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ParallelConfig(**kwargs)


def test_leftover_layers_go_to_the_earliest_stages() -> None:
    config = ParallelConfig(pipeline_parallel_size=4)
    assert [config.stage_layers(i, 10) for i in range(4)] == [
        range(0, 3),
        range(3, 6),
        range(6, 8),
        range(8, 10),
    ]


def test_configured_split_is_followed() -> None:
    config = ParallelConfig(pipeline_parallel_size=3, layer_split=(1, 4, 2))
    assert [config.stage_layers(i, 7) for i in range(3)] == [range(0, 1), range(1, 5), range(5, 7)]


@given(st.integers(1, 8), st.integers(0, 7))
def test_even_split_covers_every_layer_once_and_differs_by_at_most_one(
    pp: int, extra_layers: int
) -> None:
    num_layers = pp + extra_layers
    config = ParallelConfig(pipeline_parallel_size=pp)
    stages = [config.stage_layers(i, num_layers) for i in range(pp)]
    assert [layer for stage in stages for layer in stage] == list(range(num_layers))
    sizes = [len(stage) for stage in stages]
    assert sizes == sorted(sizes, reverse=True)
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_ranks_of_a_tp_group_are_contiguous_and_pp_groups_stride() -> None:
    config = ParallelConfig(tensor_parallel_size=2, pipeline_parallel_size=3)
    assert [[config.rank_of(p, t) for t in range(2)] for p in range(3)] == [[0, 1], [2, 3], [4, 5]]
    state = ParallelState(config, tp_rank=1, pp_rank=1)
    assert (state.rank, state.prev_stage_rank, state.next_stage_rank) == (3, 1, 5)
    assert not state.is_first_stage and not state.is_last_stage


@pytest.mark.parametrize(("kv_heads", "tp", "local"), [(8, 2, 4), (2, 2, 1), (2, 4, 1), (1, 8, 1)])
def test_each_rank_holds_its_share_of_kv_heads_or_one_replica(
    kv_heads: int, tp: int, local: int
) -> None:
    assert ParallelConfig(tensor_parallel_size=tp).local_kv_heads(kv_heads) == local
