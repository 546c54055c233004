"""Shared fixtures: tiny random models of every family, written once per test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """family (or family + '-tied') -> folder of a tiny random model, written on first use."""
    from preble.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    made: dict[str, str] = {}

    def get(family: str, tied: bool = False, dtype: str = "float32") -> str:
        key = f"{family}-{'tied' if tied else 'untied'}-{dtype}"
        if key not in made:
            made[key] = str(write_tiny_model(root / key, family, tie_word_embeddings=tied, dtype=dtype))
        return made[key]

    return get
