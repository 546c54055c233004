"""Sampling against exact distributions: top-k / top-p sets, temperature, seeds."""

from __future__ import annotations

import msgspec
import pytest
import torch

from preble.core.sampling_params import InvalidSamplingParams, SamplingParams
from preble.engine.sampler import Sampler

LOGITS = torch.log(torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]]))


def draw(params: SamplingParams, n: int = 4000, logits: torch.Tensor = LOGITS) -> torch.Tensor:
    sampler = Sampler("cpu")
    rows = logits.expand(n, -1).contiguous()
    out = sampler(rows, [f"r{i}" for i in range(n)], [params] * n)
    return torch.bincount(out, minlength=logits.shape[-1]).float() / n


def test_greedy_is_argmax():
    out = Sampler("cpu")(torch.tensor([[0.1, 3.0, 2.0], [5.0, 1.0, 0.0]]), ["a", "b"],
                         [SamplingParams(temperature=0.0)] * 2)
    assert out.tolist() == [1, 0]


def test_temperature_one_draws_the_softmax():
    torch.manual_seed(0)
    freq = draw(SamplingParams(temperature=1.0))
    assert torch.allclose(freq, LOGITS.exp()[0], atol=0.03)


def test_top_k_keeps_only_the_k_most_likely():
    torch.manual_seed(0)
    freq = draw(SamplingParams(temperature=1.0, top_k=2))
    assert freq[2:].sum() == 0
    assert torch.allclose(freq[:2], torch.tensor([0.4, 0.3]) / 0.7, atol=0.03)


def test_top_p_keeps_the_smallest_head_reaching_p():
    torch.manual_seed(0)
    freq = draw(SamplingParams(temperature=1.0, top_p=0.8))  # 0.4 + 0.3 < 0.8 <= 0.85
    assert freq[3:].sum() == 0
    assert torch.allclose(freq[:3], torch.tensor([0.4, 0.3, 0.15]) / 0.85, atol=0.03)


def test_low_temperature_sharpens():
    torch.manual_seed(0)
    assert draw(SamplingParams(temperature=0.1))[0] > 0.9


def test_seeded_requests_repeat_whatever_their_batch():
    logits = torch.randn(1, 50)
    seeded = SamplingParams(temperature=1.0, seed=1234)
    sampler = Sampler("cpu")
    seq_alone = [sampler(logits, ["x"], [seeded]).item() for _ in range(8)]
    sampler = Sampler("cpu")
    other = SamplingParams(temperature=1.0)
    seq_batched = [sampler(logits.expand(3, -1), ["y", "x", "z"], [other, seeded, other])[1].item()
                   for _ in range(8)]
    assert seq_alone == seq_batched
    assert len(set(seq_alone)) > 1  # the generator advances between steps


@pytest.mark.parametrize("bad", [
    dict(max_tokens=0), dict(max_tokens=-3), dict(temperature=-1.0), dict(top_p=0.0),
    dict(top_p=1.5), dict(stop=[""]), dict(stop_token_ids=[-1]), dict(seed="x"),
])
def test_bad_params_raise_a_typed_error(bad):
    with pytest.raises(InvalidSamplingParams):
        SamplingParams(**bad)


def test_params_cross_to_the_engine_process_as_they_are_and_are_checked_there():
    from preble.worker import protocol as P

    msg = P.Generate("r1", [1, 2, 3], SamplingParams(max_tokens=5, temperature=0.5, stop="x", seed=7))
    decoded = P.to_engine_decoder.decode(P.to_engine_encoder.encode(msg))
    assert decoded == msg and decoded.sampling.stop == ["x"]
    bad = msgspec.msgpack.encode({"type": "generate", "request_id": "r2", "prompt_token_ids": [1],
                                  "sampling": {"max_tokens": 0}})
    with pytest.raises(msgspec.ValidationError, match="max_tokens"):
        P.to_engine_decoder.decode(bad)
