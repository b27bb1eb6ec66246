"""Shared fixtures: tiny models built offline once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama with a trained byte-level BPE and a chat template, saved to disk."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def scripted_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose greedy continuation of "### Solution: " is `DEFAULT_SCRIPT` then EOS."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import DEFAULT_SCRIPT, build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("scripted_llama"), script=DEFAULT_SCRIPT)


@pytest.fixture(scope="session")
def peaked_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama with large weights: position-sensitive greedy text (batching checks)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("peaked_llama"), init_std=0.3)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DEMO model, trained once per session by the training pipeline (a few minutes).

    KAGGLE_SUBMISSION_TEST_DEMO_CACHE names a cache folder to reuse across sessions instead
    (for iterating on the tests; CI leaves it unset and trains).
    """
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("trl", reason="building the demo model needs trl (requirements-train.txt)")
    pytest.importorskip("datasets", reason="building the demo model needs datasets")
    from kaggle_submission.offline.demo import ensure_demo_model

    reuse = os.environ.get("KAGGLE_SUBMISSION_TEST_DEMO_CACHE")
    return ensure_demo_model(reuse or tmp_path_factory.getbasetemp() / "demo-cache")


@pytest.fixture(scope="session")
def demo_openmath_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DEMO model in openmath-tir form (`training.demo --protocol openmath-tir`), trained
    once per session; KAGGLE_SUBMISSION_TEST_DEMO_CACHE reuses a cache folder as `demo_dir`."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("trl", reason="building the demo model needs trl (requirements-train.txt)")
    pytest.importorskip("datasets", reason="building the demo model needs datasets")
    from kaggle_submission.offline.demo import ensure_demo_model

    reuse = os.environ.get("KAGGLE_SUBMISSION_TEST_DEMO_CACHE")
    cache = reuse or tmp_path_factory.getbasetemp() / "demo-cache"
    return ensure_demo_model(cache, protocol="openmath-tir")
