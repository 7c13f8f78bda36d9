"""The committed Python stubs are exactly what the .proto files generate."""

from __future__ import annotations

from pathlib import Path

from protos.generate import ROOT, generate


def test_stubs_match_protos(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "no stubs generated"
    for stub in fresh:
        committed = ROOT / stub
        assert committed.is_file(), f"{stub} is missing: run python -m protos.generate"
        assert committed.read_bytes() == (tmp_path / stub).read_bytes(), (
            f"{stub} is out of date with its .proto: run python -m protos.generate"
        )


def test_generated_messages_round_trip() -> None:
    from protos.kvfleet.v1 import generation_pb2 as pb

    request = pb.GenerateRequest(
        text="hi", sampling=pb.SamplingParameters(temperature=0.0, max_tokens=4, stop=["\n"])
    )
    parsed = pb.GenerateRequest.FromString(request.SerializeToString())
    assert parsed.WhichOneof("prompt") == "text"
    assert parsed.sampling.HasField("temperature") and parsed.sampling.temperature == 0.0
    assert not parsed.sampling.HasField("top_p")
