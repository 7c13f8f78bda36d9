"""kvfleet.v1 messages to the engine's types and back."""

from __future__ import annotations

import uuid

from protos.kvfleet.v1 import generation_pb2 as pb
from worker.messages import RequestOutput
from worker.sampling_params import SamplingParams

_DEFAULTS = SamplingParams()

_FINISH_REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "abort": pb.FINISH_REASON_ABORT,
    "error": pb.FINISH_REASON_ERROR,
}


def sampling_params(proto: pb.SamplingParameters) -> SamplingParams:
    """Unset optional fields (and max_tokens 0) take SamplingParams' defaults; the engine
    validates the rest."""
    d = _DEFAULTS
    return SamplingParams(
        max_tokens=proto.max_tokens or d.max_tokens,
        temperature=proto.temperature if proto.HasField("temperature") else d.temperature,
        top_k=proto.top_k if proto.HasField("top_k") else d.top_k,
        top_p=proto.top_p if proto.HasField("top_p") else d.top_p,
        min_p=proto.min_p if proto.HasField("min_p") else d.min_p,
        seed=proto.seed if proto.HasField("seed") else d.seed,
        stop=tuple(proto.stop),
        stop_token_ids=tuple(proto.stop_token_ids),
        ignore_eos=proto.ignore_eos,
        logprobs=proto.logprobs if proto.HasField("logprobs") else d.logprobs,
        include_stop_str_in_output=proto.include_stop_str_in_output,
        n=proto.n or d.n,
        beam_width=proto.beam_width or d.beam_width,
        length_penalty=(
            proto.length_penalty if proto.HasField("length_penalty") else d.length_penalty
        ),
        early_stopping=proto.early_stopping,
        speculate=not proto.disable_speculation,
    )


def prompt_of(proto: pb.GenerateRequest) -> str | list[int]:
    """Text or token ids; an unset prompt reads as empty text, which validation refuses as
    field "prompt"."""
    if proto.WhichOneof("prompt") == "token_ids":
        return list(proto.token_ids.ids)
    return proto.text


def request_id_of(proto: pb.GenerateRequest) -> str:
    """The client's id, or a fresh one."""
    return proto.request_id or f"kvf-{uuid.uuid4().hex}"


def generate_response(output: RequestOutput) -> pb.GenerateResponse:
    response = pb.GenerateResponse(
        request_id=output.request_id,
        token_ids=output.token_ids,
        text=output.text,
        index=output.index,
    )
    for lp in output.logprobs or ():
        response.logprobs.append(
            pb.Logprobs(
                token_logprob=lp.token_logprob,
                top=[pb.TokenLogprob(token_id=t, logprob=p) for t, p in lp.top],
            )
        )
    if output.finished or output.finish_reason is not None:  # the request's or a sequence's end
        response.finished.CopyFrom(finished(output))
    return response


def finished(output: RequestOutput) -> pb.Finished:
    message = pb.Finished(
        reason=_FINISH_REASONS.get(output.finish_reason or "", pb.FINISH_REASON_UNSPECIFIED),
        usage=pb.Usage(
            prompt_tokens=output.num_prompt_tokens,
            completion_tokens=output.num_output_tokens,
            cached_tokens=output.num_cached_tokens,
            transferred_tokens=output.num_transferred_tokens,
            draft_tokens=output.num_draft_tokens,
            accepted_tokens=output.num_accepted_tokens,
        ),
        timings=pb.Timings(
            queue_time_s=output.queue_time_s or 0.0,
            time_to_first_token_s=output.time_to_first_token_s or 0.0,
        ),
        error=output.error or "",
        replica=output.served_by or "",
        prefill_replica=output.prefilled_by or "",
    )
    if output.score is not None:
        message.score = output.score
    if isinstance(output.stop_reason, str):
        message.stop_string = output.stop_reason
    elif isinstance(output.stop_reason, int):
        message.stop_token_id = output.stop_reason
    return message
