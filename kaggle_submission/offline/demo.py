"""The DEMO model: a tiny Llama that solves synthetic arithmetic by writing Python.

Why: on a machine with no GPU and no competition weights, the dry run still needs a model that
exercises the whole SC-TIR path (prompt, ```python block, stop at ```output, sandbox, answer,
vote). The demo task is arithmetic a 2-layer model cannot do in its head (a four-digit number
mod 97, the last two digits of a power, a product mod 89, counting primes, a digit sum of a
square) but can solve by copying the digits into code and the printed output into the box, so
its accuracy with code execution is high and without it near zero.

Why digits named a, b, c, d, and an answer printed as ``t=3;u=7`` and boxed as ``3*10+7``: the
demo tokenizer makes the problem's ``a=7`` (and the output's ``t=3``, ``u=7``) one token and
the code's ``a=7`` the two tokens ``a`` ``=7``, so each copy the model makes (problem -> code,
output -> box) is "take the token named a", with ten values to tell apart: a lookup a 2-layer
model learns in a few CPU minutes (helped by an embedding start, see training/demo.py
`_compositional_embeddings`). Copying multi-digit numbers needs
an induction circuit or sharp number embeddings, which take far longer to learn than the demo
can afford. There are 10^4 digit choices per kind, so held-out problems are unseen and the model
cannot memorise its way to an answer; every answer is below 100.

The same task comes in two protocols (kaggle_submission.protocols), one model each, cached apart:
"numina" (manifest entry `demo`, preset `demo-cpu`) and "openmath-tir" (entry `demo-openmath`,
preset `demo-cpu-openmath`: a chat template, `<tool_call>` code, the output fed back with the
remaining-calls note). Both are asked the same held-out problems.

This module is the single definition of the demo task (problem generator, held-out split) and the
cache of the trained models. It imports nothing heavy and never imports `training` (training
imports this module, one way): a missing model is built by running ``python -m training.demo``
in a subprocess from the repository, training's own SFT pipeline. Only the offline CLI asks for
it (`model_dir_for`) and hands the kernel the directory; the kernel knows no demo model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..manifest import Weights
from ..problems import Problem

__all__ = [
    "DEMO_ENTRY_NAME",
    "DEMO_KINDS",
    "DEMO_MODELS",
    "DEMO_VERSION",
    "DemoTask",
    "default_cache_root",
    "demo_entry_name",
    "demo_model_dir",
    "demo_problems",
    "demo_version",
    "demo_weights",
    "ensure_demo_model",
    "generate_tasks",
    "is_demo_model",
    "is_held_out",
    "model_dir_for",
    "repository_root",
]

DEMO_VERSION = "v2"
"""Bump when the task, tokenizer, model shape or training recipe changes: a new cache dir."""
DEMO_ENTRY_NAME = "demo"
"""The demo's entry in weights_manifest.json (and the preset's `model` value)."""
DEMO_MODELS: dict[str, str] = {DEMO_ENTRY_NAME: "numina", "demo-openmath": "openmath-tir"}
"""Each demo model's manifest entry (a preset's `model` value) and the protocol it speaks."""
_PROTOCOL_VERSIONS = {"numina": DEMO_VERSION, "openmath-tir": "openmath-tir-v2"}
"""Per protocol: bump when its text form, tokenizer or recipe changes (a new cache dir). The
numina demo keeps DEMO_VERSION, which also seeds the problems (shared by both)."""
READY_FILE = "demo_model.json"
"""Written last into a finished model directory; its absence means "not built"."""
BANNER = (
    "DEMO MODEL: a tiny Llama trained on synthetic arithmetic; it shows the pipeline works, "
    "it is not a competition model."
)


@dataclass(frozen=True)
class DemoTask:
    """One synthetic problem: its text, the exact answer, and the numbers the code needs."""

    kind: str
    problem: str
    answer: int
    params: dict[str, Any]


def _digits(rng: random.Random) -> dict[str, int]:
    """Four digits a, b, c, d (a and c non-zero: they lead two-digit numbers)."""
    return {
        "a": rng.randint(1, 9),
        "b": rng.randint(0, 9),
        "c": rng.randint(1, 9),
        "d": rng.randint(0, 9),
    }


def _task(kind: str, question: str, answer: int, v: dict[str, int]) -> DemoTask:
    lead = f"Let $a={v['a']}$, $b={v['b']}$, $c={v['c']}$ and $d={v['d']}$ be digits. "
    return DemoTask(kind, lead + question, answer, v)


def _is_prime(k: int) -> bool:
    return k > 1 and all(k % d for d in range(2, k))


def _mod97(rng: random.Random) -> DemoTask:
    v = _digits(rng)
    n = 1000 * v["a"] + 100 * v["b"] + 10 * v["c"] + v["d"]
    q = "What is the remainder when the number $\\overline{abcd}$ is divided by $97$?"
    return _task("mod97", q, n % 97, v)


def _lastdigits(rng: random.Random) -> DemoTask:
    v = _digits(rng)
    ans = pow(10 * v["a"] + v["b"], 10 * v["c"] + v["d"], 100)
    q = "What are the last two digits of $\\overline{ab}^{\\overline{cd}}$?"
    return _task("lastdigits", q, ans, v)


def _mulmod(rng: random.Random) -> DemoTask:
    v = _digits(rng)
    ans = (10 * v["a"] + v["b"]) * (10 * v["c"] + v["d"]) % 89
    q = "What is the remainder when $\\overline{ab} \\times \\overline{cd}$ is divided by $89$?"
    return _task("mulmod", q, ans, v)


def _primes(rng: random.Random) -> DemoTask:
    v = _digits(rng)
    lo = 10 * v["a"] + v["b"]
    ans = sum(1 for k in range(lo, lo + 10 * v["c"] + v["d"] + 1) if _is_prime(k))
    q = "How many primes $p$ satisfy $\\overline{ab} \\le p \\le \\overline{ab}+\\overline{cd}$?"
    return _task("primes", q, ans, v)


def _digitsum(rng: random.Random) -> DemoTask:
    v = _digits(rng)
    n = 1000 * v["a"] + 100 * v["b"] + 10 * v["c"] + v["d"]
    q = "What is the sum of the digits of $\\overline{abcd}^2$?"
    return _task("digitsum", q, sum(int(x) for x in str(n * n)), v)


_GENERATORS: dict[str, Callable[[random.Random], DemoTask]] = {
    "mod97": _mod97,
    "lastdigits": _lastdigits,
    "mulmod": _mulmod,
    "primes": _primes,
    "digitsum": _digitsum,
}
DEMO_KINDS: tuple[str, ...] = tuple(_GENERATORS)


def is_held_out(problem: str) -> bool:
    """1/16 of the problem space, by a stable hash of the text, is never trained on."""
    return hashlib.sha256(problem.encode()).hexdigest()[0] == "0"


def generate_tasks(n: int, seed: int, held_out: bool) -> list[DemoTask]:
    """`n` distinct tasks, kinds in rotation, from the training or the held-out side."""
    rng = random.Random(f"demo-{DEMO_VERSION}-{seed}-{'eval' if held_out else 'train'}")
    tasks: list[DemoTask] = []
    seen: set[str] = set()
    kinds = list(_GENERATORS.values())
    while len(tasks) < n:
        task = kinds[len(tasks) % len(kinds)](rng)
        if task.problem in seen or is_held_out(task.problem) != held_out:
            continue
        seen.add(task.problem)
        tasks.append(task)
    return tasks


def demo_problems(n: int = 20, seed: int = 0) -> list[Problem]:
    """Held-out demo problems with answers (all below 100), for the dry run."""
    return [
        Problem(
            key=f"demo-{seed}-{i}",
            id=f"demo-{seed}-{i}",
            problem=t.problem,
            answer=t.answer,
            row=i,
            source=f"demo-{DEMO_VERSION}:{t.kind}",
        )
        for i, t in enumerate(generate_tasks(n, seed, held_out=True))
    ]


# ------------------------------------------------------------------------------ model cache


def default_cache_root() -> Path:
    """$KAGGLE_SUBMISSION_CACHE, else $XDG_CACHE_HOME/kaggle_submission, else ~/.cache/..."""
    explicit = os.environ.get("KAGGLE_SUBMISSION_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kaggle_submission"


def _check_protocol(protocol: str) -> str:
    if protocol not in _PROTOCOL_VERSIONS:
        raise ValueError(f"no demo model speaks {protocol!r} (known: {sorted(_PROTOCOL_VERSIONS)})")
    return protocol


def demo_version(protocol: str = "numina") -> str:
    """The version recorded in (and naming the cache dir of) `protocol`'s demo model."""
    return _PROTOCOL_VERSIONS[_check_protocol(protocol)]


def demo_entry_name(protocol: str = "numina") -> str:
    """The manifest entry (and preset `model` value) of `protocol`'s demo model."""
    _check_protocol(protocol)
    return next(name for name, p in DEMO_MODELS.items() if p == protocol)


def is_demo_model(name: str) -> bool:
    """Whether a preset's `model` names a demo model (built on first use, not looked up)."""
    return name in DEMO_MODELS


def demo_model_dir(
    cache_dir: str | os.PathLike[str] | None = None, protocol: str = "numina"
) -> Path:
    """Where `protocol`'s demo model lives (built or not); each protocol has its own folder."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    return root / f"demo-model-{demo_version(protocol)}"


def _ready(path: Path, protocol: str = "numina") -> bool:
    marker = path / READY_FILE
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("version") == demo_version(protocol) and (path / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock: a second process waits here while the first one trains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process building the demo model ({path})", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def repository_root() -> Path | None:
    """The repository this package sits in, when its `training/` is there to build the model."""
    repo = Path(__file__).resolve().parents[2]
    return repo if (repo / "training" / "demo.py").is_file() else None


def _build_in_subprocess(repo: Path, out: Path, manifest: Path, protocol: str = "numina") -> None:
    """``python -m training.demo --out OUT --manifest MANIFEST [--protocol P]`` from `repo`, its
    output relayed to stderr. Why a subprocess: the kit never imports `training` (imports point
    one way)."""
    command = [
        sys.executable,
        "-m",
        "training.demo",
        "--out",
        str(out),
        "--manifest",
        str(manifest),
        *(["--protocol", protocol] if protocol != "numina" else []),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p)
    tail: list[str] = []
    with subprocess.Popen(
        command,
        cwd=repo,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            tail = [*tail[-19:], line]
        sys.stderr.flush()
        code = proc.wait()
    if code != 0:
        raise RuntimeError(
            f"building the demo model failed ({' '.join(command[1:])} in {repo} exited with "
            f"{code}):\n{''.join(tail)}"
        )
    if not _ready(out, protocol):
        raise RuntimeError(f"{' '.join(command[1:])} exited 0 but {out} is not a finished model")


def ensure_demo_model(
    cache_dir: str | os.PathLike[str] | None = None,
    repo: str | os.PathLike[str] | None = None,
    protocol: str = "numina",
) -> Path:
    """`protocol`'s demo model directory, trained on first use (about two minutes on 2 CPU cores).

    Building runs ``python -m training.demo`` from the repository (`repo`, default: the one this
    package sits in), which trains with training's SFT pipeline and publishes a manifest entry
    (demo: true) into ``<cache>/weights_manifest.json``. A file lock keeps two processes from
    training at once; the model is written to a temporary directory and renamed into place when
    complete.
    """
    target = demo_model_dir(cache_dir, protocol)
    print(f"{BANNER} ({target})", file=sys.stderr, flush=True)
    if _ready(target, protocol):
        return target
    with _file_lock(target.parent / f"{target.name}.lock"):
        if _ready(target, protocol):
            return target
        root = Path(repo) if repo is not None else repository_root()
        if root is None or not (root / "training" / "demo.py").is_file():
            raise RuntimeError(
                f"the demo model is not built in {target} and no repository `training/` is next "
                "to this package to build it: from a checkout of the repository run "
                f"`python -m training.demo --out {target}"
                + (f" --protocol {protocol}" if protocol != "numina" else "")
                + "`, or pass a model directory (--model)"
            )
        tmp = target.parent / f"{target.name}.building-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.monotonic()
        print(
            "building the DEMO model (first use, about two minutes on CPU) ...",
            file=sys.stderr,
            flush=True,
        )
        try:
            _build_in_subprocess(root, tmp, target.parent / "weights_manifest.json", protocol)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"DEMO model built in {time.monotonic() - t0:.0f} s: {target}",
            file=sys.stderr,
            flush=True,
        )
    return target


def model_dir_for(
    preset_model: str, model: str | os.PathLike[str] | None
) -> str | os.PathLike[str] | Path | None:
    """The model directory an offline run hands the kernel: `model` when given, the (built on
    first use) demo model for a preset whose model is a demo, else None (the kernel then finds
    the preset's weights through the manifest)."""
    if model is None and is_demo_model(preset_model):
        protocol = DEMO_MODELS[preset_model]
        return ensure_demo_model() if protocol == "numina" else ensure_demo_model(protocol=protocol)
    return model


def demo_weights(preset_model: str, model: str | os.PathLike[str] | None) -> Weights | None:
    """For a demo preset without `model`: its model (built on first use) with the protocol its
    entry names decided, as the kernel's `weights`; else None. Why: a directory handed over
    bare gets the no-format rule (its chat template with numina's rules), which is not how the
    openmath-tir demo speaks."""
    if model is not None or not is_demo_model(preset_model):
        return None
    from ..protocols import decide_protocol

    protocol = DEMO_MODELS[preset_model]
    path = ensure_demo_model(protocol=protocol)
    return Weights(path, decide_protocol(protocol, path))
