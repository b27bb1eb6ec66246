"""The backends' registry (one table, read by `create_backend`, the kernel and the build) and
the protocol's explicit parts (optional methods with defaults, `BackendFactory`'s fallback)."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kaggle_submission.backends as backends
from kaggle_submission.backends import (
    BACKENDS,
    KAGGLE_BACKENDS,
    Backend,
    BackendFactory,
    backend_class,
    create_backend,
)
from kaggle_submission.backends.scripted import ScriptedBackend
from kaggle_submission.config import EngineConfig
from kaggle_submission.engine import Solver, start_backend
from kaggle_submission.kernel import backend_options, make_backend_factory
from kaggle_submission.sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parents[1]
BACKENDS_DIR = ROOT / "kaggle_submission" / "backends"


def test_registry_names_every_backend_class():
    """Each registered name builds its own class, a `Backend`; the registry is the only table."""
    expected = {
        "vllm": "VLLMBackend",
        "transformers": "TransformersBackend",
        "openai": "OpenAIBackend",
        "replay": "ReplayBackend",
        "scripted": "ScriptedBackend",
    }
    assert {name: cls for name, (_module, cls) in BACKENDS.items()} == expected
    assert set(BACKENDS) >= KAGGLE_BACKENDS
    for name in ("openai", "replay", "scripted"):  # cheap to import; vllm/torch are not
        cls = backend_class(name)
        assert issubclass(cls, Backend) and cls.name == name
    assert isinstance(create_backend("scripted", latency=0.0), ScriptedBackend)


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="unknown backend 'nope': choose vllm, transformers"):
        create_backend("nope")


def test_protocol_module_imports_no_backend():
    """base.py is the protocol: it imports no backend module and builds none."""
    modules = {f".{module}" for module, _cls in BACKENDS.values()}
    tree = ast.parse((BACKENDS_DIR / "base.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not imported & modules
    assert not any("backend" in name or name.startswith(".") for name in imported), imported
    import kaggle_submission.backends.base as base

    assert not hasattr(base, "create_backend") and not hasattr(base, "BackendSpec")


def test_registry_imports_a_backend_only_when_asked():
    """Importing the package and building a test double loads neither torch nor vllm."""
    code = (
        "import sys\n"
        "from kaggle_submission.backends import backend_class\n"
        "backend_class('scripted'); backend_class('replay')\n"
        "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))\n"
        "print('kaggle_submission.backends.vllm_backend' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["[]", "False"]


class Minimal(Backend):
    """Only what the protocol requires."""

    name = "minimal"

    async def generate(self, request: Any) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {}


def test_protocol_defaults_are_explicit():
    backend = Minimal()
    asyncio.run(backend.start())
    backend.kill()
    assert backend.progress() is None
    assert backend.dead is False


def test_a_backend_must_implement_the_required_methods():
    class NoDescribe(Backend):
        async def generate(self, request: Any) -> Any:
            raise NotImplementedError

        async def aclose(self) -> None:
            return None

    with pytest.raises(TypeError, match="describe"):
        NoDescribe()  # type: ignore[abstract]


class FailsToStart(ScriptedBackend):
    name = "fails-to-start"

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.killed = False

    async def start(self) -> None:
        raise RuntimeError("no engine today")

    async def aclose(self) -> None:
        self.closed = True

    def kill(self) -> None:
        self.killed = True


def test_factory_fallback_replaces_a_backend_that_does_not_start():
    first = FailsToStart()
    spare = ScriptedBackend()
    started = asyncio.run(start_backend(BackendFactory(lambda: first, fallback=lambda: spare)))
    assert started is spare and first.closed
    with pytest.raises(RuntimeError, match="no engine today"):
        asyncio.run(start_backend(BackendFactory(FailsToStart)))


def test_plain_function_attribute_is_no_fallback():
    """The fallback is the factory's field, no longer an attribute looked up on a function."""

    def build() -> Backend:
        return FailsToStart()

    build.fallback = ScriptedBackend  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="no engine today"):
        asyncio.run(start_backend(build))


def test_rebuild_kills_what_it_built_when_the_fallback_fails_too():
    """A rebuild goes through the factory's fallback too, and when that fails as well the
    backend that did not start is killed (nothing left holding memory)."""
    first = FailsToStart()

    def broken_fallback() -> Backend:
        raise RuntimeError("no fallback either")

    box = Sandbox(SandboxConfig(timeout_s=2.0))
    solver = Solver(ScriptedBackend(), box, EngineConfig(num_rollouts=1, max_calls=1))
    try:
        with pytest.raises(RuntimeError, match="no fallback either"):
            solver.rebuild(BackendFactory(lambda: first, fallback=broken_fallback))
        assert first.killed
        spare = ScriptedBackend()
        solver.rebuild(BackendFactory(FailsToStart, fallback=lambda: spare))
        assert solver.backend is spare
    finally:
        solver.close()


def test_auto_factory_carries_its_fallback(tmp_path):
    """Preset backend "auto" is a factory whose fallback builds transformers; others have none."""
    auto = make_backend_factory("auto", tmp_path, {})
    assert isinstance(auto, BackendFactory) and auto.fallback is not None
    named = make_backend_factory("scripted", tmp_path, {})
    assert isinstance(named, BackendFactory) and named.fallback is None
    assert isinstance(named(), ScriptedBackend)  # `model` dropped: ScriptedBackend takes none


def test_backend_options_read_the_registered_class(monkeypatch, tmp_path):
    """Accepted options come from the registered class's signature, whatever its name."""
    monkeypatch.setitem(backends.BACKENDS, "double", ("scripted", "ScriptedBackend"))
    options = backend_options("double", tmp_path, {"latency": 0.5, "tensor_parallel_size": 2})
    assert options == {"latency": 0.5}
    # an unknown name keeps every option (it fails when built, naming the choices)
    unknown = backend_options("nope", tmp_path, {"tensor_parallel_size": 2})
    assert unknown == {"model": str(tmp_path), "tensor_parallel_size": 2}
