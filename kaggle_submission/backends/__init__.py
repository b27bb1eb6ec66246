"""LLM backends behind one asynchronous protocol (`base`), and the registry of them by name.

The registry is the one table of backends: `create_backend` builds one by name, the kernel reads
a backend's accepted options from `backend_class(name)`, and the notebook build reads which
modules to embed. Each backend module imports its heavy dependency (torch, transformers, vllm)
inside itself, and the registry imports a backend's module only when that backend is asked for,
so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import (
    Backend,
    BackendFactory,
    Completion,
    GenerationRequest,
    SamplingParams,
)

# name -> (module in this package, class): every backend the kit can build
BACKENDS: dict[str, tuple[str, str]] = {
    "vllm": ("vllm_backend", "VLLMBackend"),
    "transformers": ("transformers_backend", "TransformersBackend"),
    "openai": ("openai_backend", "OpenAIBackend"),
    "replay": ("replay", "ReplayBackend"),
    "scripted": ("scripted", "ScriptedBackend"),
}

# the backends a preset runs inside the Kaggle notebook ("auto" picks one of them); the others
# are for offline runs (openai: servers) and tests (replay, scripted)
KAGGLE_BACKENDS: frozenset[str] = frozenset({"vllm", "transformers"})


def backend_class(name: str) -> type[Backend]:
    """The class registered as `name`, its module imported now (torch/vllm only for theirs)."""
    if name not in BACKENDS:
        choices = ", ".join(BACKENDS)
        raise ValueError(f"unknown backend {name!r}: choose {choices}")
    module_name, class_name = BACKENDS[name]
    module = importlib.import_module(f".{module_name}", __name__)
    cls: type[Backend] = getattr(module, class_name)
    return cls


def create_backend(name: str, **options: Any) -> Backend:
    """Build the backend registered as `name` with its keyword options (model path, dtype...)."""
    return backend_class(name)(**options)


__all__ = [
    "BACKENDS",
    "KAGGLE_BACKENDS",
    "Backend",
    "BackendFactory",
    "Completion",
    "GenerationRequest",
    "SamplingParams",
    "backend_class",
    "create_backend",
]
