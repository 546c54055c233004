"""The per-GPU engine: model, KV pool, attention backends, sampling and the step loop."""
