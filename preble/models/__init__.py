"""Model checkpoints used by the engine and tests: tiny random Hugging Face models of each supported family."""
