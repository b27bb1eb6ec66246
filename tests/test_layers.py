"""The layer rules (docs/architecture.md), read from the imports of the real tree, and proof on
synthetic trees that each rule catches what it names, so that the first test can fail."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kaggle_submission.offline import layers

REPO = Path(__file__).resolve().parent.parent


def test_the_kit_keeps_its_layers():
    """No kit module imports training/; the backend protocol imports no backend; the Kaggle path
    imports no offline tool; the pure core imports nothing heavy nor above it; no cycles."""
    violations = layers.check(layers.scan(REPO))
    assert violations == [], "\n".join(map(str, violations))


def test_the_kaggle_closure_is_the_kaggle_path():
    """What the notebook embeds: the entry's closure with the Kaggle backends and the sandbox's
    worker, and none of the offline tools, the CLI or the test doubles."""
    graph = layers.scan(REPO, packages=(layers.PACKAGE,))
    closure = layers.kaggle_closure(graph)
    kit = "kaggle_submission"
    for name in ("notebook_main", "kernel", "engine", "answers", "budget", "manifest"):
        assert f"{kit}.{name}" in closure
    for name in ("aimo1", "aimo2", "aimo3", "gateway"):
        assert f"{kit}.competition.{name}" in closure
    from kaggle_submission.backends import BACKENDS, KAGGLE_BACKENDS

    assert {"vllm", "transformers"} <= KAGGLE_BACKENDS
    for name, (module, _) in BACKENDS.items():  # the registry decides, read by the walker
        assert (f"{kit}.backends.{module}" in closure) is (name in KAGGLE_BACKENDS), name
    workers = [m for m in graph.modules if "sandbox" in m and "worker" in m]
    assert workers and set(workers) <= closure  # launched with -m, never imported
    assert all(layers.is_kaggle_path(m) for m in closure)
    assert not {m for m in closure if m.startswith(f"{kit}.offline")}
    assert f"{kit}.__main__" not in closure
    assert not {f"{kit}.backends.replay", f"{kit}.backends.scripted"} & closure


# ------------------------------------------------------------------------------ synthetic trees

CLEAN = {
    "kaggle_submission/__init__.py": '"""kit"""\n',
    "kaggle_submission/answers.py": "import re\n",
    "kaggle_submission/budget.py": "from .answers import re\n",
    "kaggle_submission/engine.py": (
        "import asyncio\nfrom .budget import re\nfrom .backends.base import Backend\n"
    ),
    "kaggle_submission/backends/__init__.py": (
        "from .base import Backend\n"
        "REGISTRY = {\n"
        '    "vllm": ("vllm_backend", "VLLMBackend"),\n'
        '    "replay": ("replay", "ReplayBackend"),\n'
        "}\n"
    ),
    "kaggle_submission/backends/base.py": (
        "from __future__ import annotations\nimport hashlib\nfrom ..answers import re\n"
        "class Backend: ...\n"
    ),
    "kaggle_submission/backends/vllm_backend.py": (
        "from .base import Backend\n\ndef start():\n    import vllm\n"
    ),
    "kaggle_submission/backends/replay.py": "from .base import Backend\n",
    "kaggle_submission/sandbox.py": (
        "import subprocess, sys\n\ndef spawn():\n"
        '    module = f"{__package__}._worker"\n'
        '    subprocess.Popen([sys.executable, "-m", module])\n'
    ),
    "kaggle_submission/_worker.py": "import os\n",
    "kaggle_submission/kernel.py": (
        "from typing import TYPE_CHECKING\nfrom .engine import asyncio\nfrom . import sandbox\n\n"
        "if TYPE_CHECKING:\n    from .notebook_main import main\n\n"
        "def backend(name):\n    from .backends import REGISTRY\n"
    ),
    "kaggle_submission/notebook_main.py": "def main():\n    from .kernel import backend\n",
    "kaggle_submission/__main__.py": "from kaggle_submission.offline.cli import main\n",
    "kaggle_submission/offline/__init__.py": "",
    "kaggle_submission/offline/cli.py": "from ..kernel import backend\n",
    "kaggle_submission/offline/report.py": "import numpy\n",
    "training/__init__.py": "",
    "training/demo.py": "from kaggle_submission.offline.report import numpy\n",
    "training/sft.py": "from .data import rows\n",
    "training/data.py": "rows = []\n",
}


def _tree(root: Path, changes: dict[str, str]) -> Path:
    for rel, text in {**CLEAN, **changes}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def test_an_offline_tool_may_run_training_as_a_program(tmp_path):
    """The CLI edge builds the demo model with `python -m training.demo` in a subprocess: no
    import, and no cycle with training's imports of the kit."""
    cli = (
        "import subprocess, sys\n\ndef build():\n"
        '    subprocess.run([sys.executable, "-m", "training.demo"])\n'
    )
    tree = _tree(tmp_path, {"kaggle_submission/offline/report.py": cli})
    assert layers.check(layers.scan(tree)) == []


def test_a_clean_synthetic_tree_passes(tmp_path):
    """The baseline of the cases below: offline tools import the Kaggle path, training imports
    the kit, the CLI's __main__ imports the offline CLI; all allowed."""
    assert layers.check(layers.scan(_tree(tmp_path, {}))) == []


BROKEN = {
    "kernel imports training lazily": (
        "no-training",
        {"kaggle_submission/kernel.py": "def f():\n    import training.demo\n"},
    ),
    "offline tool imports training": (
        "no-training",
        {"kaggle_submission/offline/cli.py": "from training import demo\n"},
    ),
    "Kaggle path runs training as a program": (
        "no-training",
        {
            "kaggle_submission/kernel.py": (
                "import subprocess, sys\n\ndef f():\n"
                '    subprocess.run([sys.executable, "-m", "training.demo"])\n'
            )
        },
    ),
    "sys.path insert for training": (
        "no-training",
        {
            "kaggle_submission/offline/cli.py": (
                "import sys\n\ndef f(repo):\n    sys.path.insert(0, str(repo / 'training'))\n"
            )
        },
    ),
    "protocol imports a backend": (
        "protocol",
        {
            "kaggle_submission/backends/base.py": (
                "class Backend: ...\n\ndef create(name):\n"
                "    from .vllm_backend import start\n    return start\n"
            )
        },
    ),
    "protocol imports a heavy dependency": (
        "protocol",
        {"kaggle_submission/backends/base.py": "import torch\nclass Backend: ...\n"},
    ),
    "protocol imports the engine": (
        "protocol",
        {"kaggle_submission/backends/base.py": "from .. import engine\nclass Backend: ...\n"},
    ),
    "kernel imports an offline tool in a function": (
        "no-offline",
        {"kaggle_submission/kernel.py": "def f():\n    from .offline.report import numpy\n"},
    ),
    "engine imports the offline package by name": (
        "no-offline",
        {"kaggle_submission/engine.py": "from kaggle_submission import offline\n"},
    ),
    "backend imports a deep offline module": (
        "no-offline",
        {"kaggle_submission/backends/replay.py": "import kaggle_submission.offline.report\n"},
    ),
    "notebook imports the offline package lazily": (
        "no-offline",
        {"kaggle_submission/notebook_main.py": "def main():\n    from . import offline\n"},
    ),
    "pure core imports numpy": (
        "pure-core",
        {"kaggle_submission/answers.py": "def f():\n    import numpy as np\n"},
    ),
    "pure core imports the engine": (
        "pure-core",
        {"kaggle_submission/budget.py": "from .engine import asyncio\n"},
    ),
    "pure core imports the sandbox": (
        "pure-core",
        {"kaggle_submission/answers.py": "from kaggle_submission.sandbox import spawn\n"},
    ),
    "two training modules import each other": (
        "no-cycle",
        {"training/data.py": "def rows():\n    from .sft import rows\n"},
    ),
    "kernel and engine import each other": (
        "no-cycle",
        {"kaggle_submission/engine.py": "from .kernel import backend\n"},
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_rule_catches_its_violation(tmp_path, case):
    rule, changes = BROKEN[case]
    root = _tree(tmp_path, changes)
    violations = layers.check(layers.scan(root))
    assert rule in {v.rule for v in violations}, violations


def test_type_checking_imports_make_no_cycle(tmp_path):
    """kernel -> notebook_main under TYPE_CHECKING, notebook_main -> kernel at run time."""
    graph = layers.scan(_tree(tmp_path, {}))
    assert any(e.type_checking for e in graph.imports("kaggle_submission.kernel"))
    assert graph.cycles() == []


def test_closure_follows_registries_and_launched_modules(tmp_path):
    """Edges no import statement shows: the backends' registry (test doubles left out) and the
    sandbox worker started by `-m f"{__package__}._worker"`; parents come with their children."""
    graph = layers.scan(_tree(tmp_path, {}), packages=("kaggle_submission",))
    closure = layers.kaggle_closure(graph)
    assert closure == {
        "kaggle_submission",
        "kaggle_submission.notebook_main",
        "kaggle_submission.kernel",
        "kaggle_submission.engine",
        "kaggle_submission.budget",
        "kaggle_submission.answers",
        "kaggle_submission.sandbox",
        "kaggle_submission._worker",
        "kaggle_submission.backends",
        "kaggle_submission.backends.base",
        "kaggle_submission.backends.vllm_backend",
    }
    # the full closure (a test run would follow the registry's doubles too)
    assert "kaggle_submission.backends.replay" in graph.closure([layers.ENTRY])


def test_the_registry_names_the_kaggle_backends(tmp_path):
    """A KAGGLE_BACKENDS set beside the registry decides which backends are embedded."""
    registry = CLEAN["kaggle_submission/backends/__init__.py"]
    changes = {
        "kaggle_submission/backends/__init__.py": registry
        + 'KAGGLE_BACKENDS: frozenset[str] = frozenset({"replay"})\n'
    }
    graph = layers.scan(_tree(tmp_path, changes), packages=("kaggle_submission",))
    assert graph.kaggle_backends == {"replay"}
    closure = layers.kaggle_closure(graph)
    assert "kaggle_submission.backends.replay" in closure
    assert "kaggle_submission.backends.vllm_backend" not in closure
