"""Competition API adapters: one small module per competition, chosen by the preset.

Each adapter module defines NAME, POLICY, SUBMISSION_FILE, PER_CALL_LIMIT_S and
`run(answer_fn, test_path, on_serving)`; the local gateway drives the same entry points. Adding a
competition is one module here and one line in ADAPTERS.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ADAPTERS = {"aimo1": "aimo1", "aimo2": "aimo2", "aimo3": "aimo3"}


def get_adapter(competition: str) -> ModuleType:
    """The adapter module of a competition by name."""
    if competition not in ADAPTERS:
        raise ValueError(f"unknown competition {competition!r}: choose one of {sorted(ADAPTERS)}")
    return importlib.import_module(f"{__name__}.{ADAPTERS[competition]}")
