"""Offline batch generation, vLLM-style: `LLM(model_dir).generate(prompts, params)`."""

from __future__ import annotations

from collections.abc import Sequence

from ..core.sampling_params import SamplingParams
from .config import EngineConfig
from .engine import LLMEngine
from .outputs import CompletionOutput, RequestOutput

Prompt = str | list[int]


class LLM:
    def __init__(self, model: str, device: str = EngineConfig.device, **engine_options) -> None:
        self.engine = LLMEngine(EngineConfig.from_options(model, device=device, **engine_options))
        self.tokenizer = self.engine.tokenizer

    def close(self) -> None:
        """Release the other ranks of a tensor-parallel model."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids); outputs come back in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params if sampling_params is not None else SamplingParams()
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        engine = self.engine
        texts, reqs = [], []
        try:
            for prompt, sp in zip(prompts, params):
                text = prompt if isinstance(prompt, str) else None
                if text is not None and self.tokenizer is None:
                    raise ValueError("this model has no tokenizer: give prompts as token ids")
                ids = self.tokenizer.encode(prompt) if text is not None else list(prompt)
                texts.append(text)
                reqs.append(engine.add_request(ids, sp))
            while any(not r.is_finished for r in reqs):
                engine.step()
        except BaseException:
            for r in reqs:
                engine.abort(r.request_id)
            raise
        return [
            RequestOutput(
                request_id=r.request_id, prompt=text, prompt_token_ids=r.prompt_token_ids,
                outputs=[CompletionOutput(0, engine.decode(r), list(r.output_token_ids), r.finish_reason)],
                num_cached_tokens=r.num_cached_tokens or 0, finished=True)
            for text, r in zip(texts, reqs)
        ]
