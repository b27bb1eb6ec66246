"""LLM backends behind one asynchronous protocol (see `base`).

Each backend module imports its heavy dependency (torch, transformers, vllm) inside itself, so
importing this package stays cheap. `create_backend` builds one by name.
"""

from __future__ import annotations

from .base import Backend, Completion, GenerationRequest, SamplingParams, create_backend

__all__ = ["Backend", "Completion", "GenerationRequest", "SamplingParams", "create_backend"]
