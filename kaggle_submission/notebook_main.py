"""What the built Kaggle notebook calls: the offline install and the whole run, in two functions.

Start-up order (docs/architecture.md):

1. `install_requirements` (the install cell): the kit's requirements from the attached wheels
   dataset, `pip install --no-index --find-links`, before anything imports them;
2. `main` (the run cell): the competition's adapter starts serving at once (AIMO-2/3's
   kaggle_evaluation server, AIMO-1's `aimo` env loop: the same path for all three) while a
   background thread builds the kernel: the sandbox template (forked before any CUDA context
   exists) -> the weights, found under the input mounts through the weights manifest and
   size-checked -> the engine (CUDA). Each problem's call waits for that build, then goes to
   `Kernel.answer`; a failed build answers every problem with the fallback. Kaggle's gateway
   gives the server 15 minutes from its first dial, and the build no longer counts against it.

Off Kaggle (no /kaggle/input) `main` serves the kit's own local gateway on a CSV instead and writes
the submission file in the competition's format, so the built notebook runs anywhere (tests execute
it on CPU with a tiny model). Paths can be redirected with environment variables (`ENV`), which is
how a test points the kernel at a fake input tree.

Standard library only at import: the install cell imports this module before the wheels are in.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Where Kaggle mounts things is kaggle_paths' knowledge; these names are used below.
from .kaggle_paths import (
    INPUT_ROOT_ENV,
    competition_dirs,
    dataset_dirs,
    input_roots,
    on_kaggle,
)

if TYPE_CHECKING:
    from .kernel import Kernel
    from .manifest import Weights
    from .presets import Preset

log = logging.getLogger(__name__)

ENV: dict[str, str] = {
    INPUT_ROOT_ENV: "input root(s) to search instead of /kaggle/input (os.pathsep-separated)",
    "AIMO_MODE": "kaggle | local | auto (default: kaggle when /kaggle/input exists)",
    "AIMO_MANIFEST": "weights manifest to use instead of the kit's weights_manifest.json",
    "AIMO_MODEL_DIR": "weights directory to use instead of searching the input roots",
    "AIMO_CHECK_HASHES": "1: also compare sha256 of every weights file (minutes for 8 GB)",
    "AIMO_LOCAL_CSV": "local mode: the CSV (id, problem[, answer]) the local gateway serves",
    "AIMO_OUT_DIR": "where the submission file and traces.jsonl go (default: the working dir)",
}
"""Every environment variable this module reads, with what it does."""

MODES = ("auto", "kaggle", "local")


# ------------------------------------------------------------------------------ where things are


def run_mode(mode: str | None = None) -> str:
    """ "kaggle" or "local": the argument, else $AIMO_MODE, else decided by `on_kaggle`."""
    chosen = (mode or os.environ.get("AIMO_MODE") or "auto").strip().lower()
    if chosen not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {chosen!r}")
    if chosen == "auto":
        return "kaggle" if on_kaggle() else "local"
    return chosen


def _has_wheels(directory: Path) -> bool:
    return any(directory.glob("*.whl"))


def find_wheels(handle: str, roots: Sequence[Path]) -> Path | None:
    """The directory of the wheels dataset that holds *.whl files (or its one subfolder that
    does, when the folder itself was uploaded); None when it is not attached."""
    for directory in dataset_dirs(handle, roots):
        if not directory.is_dir():
            continue
        if _has_wheels(directory):
            return directory
        nested = sorted(p for p in directory.iterdir() if p.is_dir() and _has_wheels(p))
        if len(nested) == 1:
            return nested[0]
    return None


def pip_install_command(
    wheels_dir: Path,
    requirements: Path,
    *,
    python: str | os.PathLike[str] | None = None,
    report: Path | None = None,
) -> list[str]:
    """The offline install: only the attached wheels, never an index (there is no internet),
    no pip configuration (`--isolated`), and `--no-deps`: exactly the pinned lines, which the
    dry run (`report` given: `--dry-run --report`, resolving dependencies against the
    installed image) has proved are all that pip would install. `python`: another interpreter
    to install into (pip's `--python`; tests use a bare venv)."""
    command = [sys.executable, "-m", "pip"]
    if python is not None and str(python) != sys.executable:
        command += ["--python", str(python)]
    command += [
        "install",
        "--isolated",
        "--no-index",
        "--find-links",
        str(wheels_dir),
        "-r",
        str(requirements),
        "--no-warn-script-location",
        "--disable-pip-version-check",
    ]
    command += ["--dry-run", "--report", str(report)] if report is not None else ["--no-deps"]
    return command


def install_requirements(
    dataset: str | None,
    requirements: str | os.PathLike[str],
    roots: str | Sequence[Any] | None = None,
    *,
    mode: str | None = None,
    execute: bool = True,
    python: str | os.PathLike[str] | None = None,
) -> list[str] | None:
    """The install cell: pip-install `requirements` from the attached wheels dataset.

    Skipped with a message off Kaggle (the local environment already holds the requirements)
    and when no dataset is configured. On Kaggle a missing dataset raises at once, naming every
    place looked at: a submission without its pinned engine would only fail later, less clearly.
    Before installing, a dry run resolves the set against the installed image: if it does not
    resolve, needs a wheel the requirements do not pin, or would change torch, it raises
    `WheelSetError` with nothing installed (in the commit run, before serving). It then prints
    what it installed (name, image version -> new) and checks the versions landed.
    Returns the install command (run unless `execute` is false), or None when skipped.
    """
    if run_mode(mode) != "kaggle":
        print("not on Kaggle (no /kaggle/input): skipping the offline install")
        return None
    if not dataset:
        print("no wheels dataset configured: skipping the offline install")
        return None
    found = input_roots(roots)
    wheels = find_wheels(dataset, found)
    if wheels is None:
        looked = "\n  ".join(str(d) for d in dataset_dirs(dataset, found))
        raise FileNotFoundError(
            f"wheels dataset {dataset} is not attached (no *.whl found); add it to the notebook's "
            f"inputs (kernel-metadata.json dataset_sources). Looked in:\n  {looked}"
        )
    requirements = Path(requirements)
    command = pip_install_command(wheels, requirements, python=python)
    if not execute:
        print("$ " + " ".join(command), flush=True)
        return command
    import json
    import tempfile

    from . import wheelset as ws

    started = time.monotonic()
    pins = ws.parse_requirements(requirements.read_text(encoding="utf-8"))
    env = ws.clean_pip_env()
    target = str(python or sys.executable)
    before = ws.installed_versions(target)
    with tempfile.TemporaryDirectory(prefix="aimo-dry-run-") as tmp:
        report_path = Path(tmp) / "report.json"
        dry = pip_install_command(wheels, requirements, python=python, report=report_path)
        print("$ " + " ".join(dry), flush=True)
        done = subprocess.run(dry, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise ws.WheelSetError(
                f"the wheel set in {wheels} does not resolve on this image; nothing was "
                f"installed:\n{ws.pip_error(done.stdout, done.stderr)}"
            )
        report = json.loads(report_path.read_text(encoding="utf-8"))
    plan = ws.dry_run_plan(report, pins, before)
    print(f"dry run: {len(plan.installs)} to install\n{plan.describe()}", flush=True)
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)
    after = ws.installed_versions(target)
    wrong = [
        f"{name}: {after.get(ws.canonical(name))} installed, {new} expected"
        for name, _, new in plan.installs
        if after.get(ws.canonical(name)) != new
    ]
    if wrong:
        raise ws.WheelSetError("the install did not give the planned versions: " + "; ".join(wrong))
    importlib.invalidate_caches()
    print(
        f"installed {len(plan.installs)} wheels from {wheels} in "
        f"{time.monotonic() - started:.1f} s; torch stays {after.get('torch', 'absent')}",
        flush=True,
    )
    return command


def add_competition_paths(competition: str, roots: Sequence[Path]) -> list[Path]:
    """Put the mounted competition folder on sys.path (appended) so that `import aimo` and
    `import kaggle_evaluation...` resolve wherever Kaggle mounted the data."""
    added = []
    for directory in competition_dirs(competition, roots):
        if directory.is_dir() and str(directory) not in sys.path:
            sys.path.append(str(directory))
            added.append(directory)
    return added


def competition_test_csv(competition: str, roots: Sequence[Path]) -> Path | None:
    """The competition's test.csv under the input mounts (None when not attached)."""
    for directory in competition_dirs(competition, roots):
        if (directory / "test.csv").is_file():
            return directory / "test.csv"
    return None


# ------------------------------------------------------------------------------ weights


def make_kernel(
    preset: Preset,
    weights: Callable[[], Weights] | None,
    trace_path: Path | None,
    run_started: float | None,
    model_dir: str | os.PathLike[str] | None = None,
) -> Kernel:
    """A Kernel that finds the weights (`weights`: `manifest.find_weights` with this run's
    manifest, roots and checks) when it asks for them, that is after the sandbox template
    started, and decides the prompt with them before the engine is built. With `weights` None
    the kernel resolves the model itself (`model_dir`)."""
    from .kernel import Kernel

    return Kernel(
        preset,
        model_dir=model_dir,
        trace_path=trace_path,
        run_started=run_started,
        weights=weights,
    )


# ------------------------------------------------------------------------------ the run


@dataclass
class RunResult:
    """What the run cell gets back (and prints)."""

    mode: str
    preset: str
    competition: str
    kit: str
    model: str = ""
    submission: str | None = None
    answered: int = 0
    scored: int = 0
    correct: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    t_serving_s: float | None = None
    t_engine_ready_s: float | None = None
    engine_error: str | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _setup_logging(level: str) -> None:
    """One stdout handler on the package logger: the notebook's log shows the start-up steps."""
    logger = logging.getLogger("kaggle_submission")
    logger.setLevel(level)
    if not any(getattr(h, "_aimo_kit", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._aimo_kit = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def resolve_preset(name: str, overrides: Mapping[str, Any] | None = None) -> Preset:
    """The config cell's preset: a name (or preset file) with dotted overrides applied."""
    from .presets import get_preset

    preset = get_preset(name)
    return preset.with_overrides(dict(overrides)) if overrides else preset


def main(
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    started_at: float | None = None,
    mode: str | None = None,
    input_root: str | Sequence[Any] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    check_hashes: bool | None = None,
    local_csv: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    shuffle_seed: int | None = 0,
    log_level: str = "INFO",
) -> RunResult:
    """The run cell: the competition's serving loop at once, the kernel (sandbox, weights,
    engine) built in the background meanwhile (`kernel.BackgroundStart`).

    `started_at` is the notebook's first-cell `time.time()`: the budget counts the install and
    start-up against the competition's limit. Keyword arguments left None fall back to the
    environment variables in `ENV`. The result carries the seconds from this call's start to
    "server accepting calls" (`t_serving_s`) and to "engine ready" (`t_engine_ready_s`).
    """
    cell_started = time.monotonic()
    _setup_logging(log_level)
    t0 = time.time()
    started = started_at if started_at is not None else t0
    run_started = time.monotonic() - max(0.0, t0 - started)
    chosen = run_mode(mode)
    roots = input_roots(input_root)
    kit = str(Path(__file__).resolve().parent)
    spec = resolve_preset(preset, overrides)

    problems = None
    if chosen == "local":
        problems = _local_problems(local_csv)
        if "budget.num_problems" not in (overrides or {}):
            spec = spec.with_overrides({"budget.num_problems": len(problems)})
    out = Path(out_dir or os.environ.get("AIMO_OUT_DIR") or Path.cwd())
    out.mkdir(parents=True, exist_ok=True)
    log.info(
        "%s mode | preset %s (%s, %s on %s) | model %s | kit %s | input roots %s",
        chosen,
        spec.name,
        spec.competition,
        spec.backend,
        spec.hardware,
        spec.model,
        kit,
        ", ".join(str(r) for r in roots),
    )

    explicit_dir = model_dir or os.environ.get("AIMO_MODEL_DIR") or None
    weights: Callable[[], Weights] | None = None
    if spec.model != "demo":  # the demo model comes as a directory (model_dir, AIMO_MODEL_DIR)
        hashes = _env_flag("AIMO_CHECK_HASHES") if check_hashes is None else check_hashes
        manifest_path = manifest or os.environ.get("AIMO_MANIFEST") or None

        def weights() -> Weights:
            from .manifest import find_weights

            return find_weights(spec.model, manifest_path, roots, explicit_dir, hashes)

    from .competition import get_adapter
    from .kernel import BackgroundStart

    adapter = get_adapter(spec.competition)
    result = RunResult(chosen, spec.name, spec.competition, kit)
    kernel = make_kernel(spec, weights, out / "traces.jsonl", run_started, explicit_dir)
    build = BackgroundStart(kernel, adapter.PER_CALL_LIMIT_S, cell_started)
    counter = {"n": 0}

    def on_serving() -> None:
        build.serving()
        build.begin()

    def answer(problem_id: str, problem: str) -> int:
        start = time.monotonic()
        value = build.answer(problem_id, problem)
        counter["n"] += 1
        log.info(
            "problem %s -> %d in %.1f s (%d answered, %.0f s left in the budget)",
            problem_id,
            value,
            time.monotonic() - start,
            counter["n"],
            kernel.budget.time_left(),
        )
        return value

    try:
        if chosen == "kaggle":
            _serve_kaggle(spec.competition, answer, roots, on_serving)
            submission = Path.cwd() / adapter.SUBMISSION_FILE
            result.submission = str(submission) if submission.exists() else None
        else:
            from .competition.gateway import run_local_gateway

            assert problems is not None
            on_serving()
            gateway = run_local_gateway(
                spec.competition, problems, answer, out, shuffle_seed=shuffle_seed
            )
            result.submission = str(gateway.submission_path)
            result.scored, result.correct = gateway.scored, gateway.correct
            result.violations = list(gateway.violations)
    finally:
        build.close()
    result.model = str(kernel.model_path or "")
    result.t_serving_s, result.t_engine_ready_s = build.t_serving_s, build.t_engine_ready_s
    if build.error is not None:
        result.engine_error = f"{type(build.error).__name__}: {build.error}"
    result.answered = counter["n"]
    result.seconds = time.time() - t0
    summary = f"{result.answered} problems answered in {result.seconds:.0f} s"
    if result.scored:
        summary += f", {result.correct}/{result.scored} correct"
    log.info("%s; submission %s", summary, result.submission)
    log.info(
        "start-up: server accepting calls after %s s, engine ready after %s s (from the run cell)",
        _seconds(result.t_serving_s),
        _seconds(result.t_engine_ready_s),
    )
    if result.engine_error:
        log.error(
            "the engine never started (%s): every answer was the fallback", result.engine_error
        )
    for violation in result.violations:
        log.warning("gateway: %s", violation)
    return result


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _local_problems(local_csv: str | os.PathLike[str] | None) -> list[Any]:
    from .problems import load_problems

    csv_path = local_csv or os.environ.get("AIMO_LOCAL_CSV")
    if not csv_path:
        raise ValueError(
            "not on Kaggle and no problems given: set AIMO_LOCAL_CSV (or pass local_csv=) to a "
            "CSV with columns id, problem and optionally answer"
        )
    return list(load_problems(csv_path))


def _serve_kaggle(
    competition: str,
    answer: Callable[[str, str], int],
    roots: Sequence[Path],
    on_serving: Callable[[], None] | None = None,
) -> None:
    """Kaggle's own API: the `aimo` env (AIMO-1) or the kaggle_evaluation server (AIMO-2/3),
    which serves on the competition rerun and runs Kaggle's local gateway on test.csv otherwise.
    `on_serving` runs just before the server takes calls (the kernel build starts there)."""
    from .competition import get_adapter
    from .competition.kaggle_eval import is_rerun

    added = add_competition_paths(competition, roots)
    if added:
        log.info("competition data on sys.path: %s", ", ".join(map(str, added)))
    test_csv = competition_test_csv(competition, roots)
    log.info(
        "serving %s (rerun: %s, test.csv: %s)",
        competition,
        is_rerun(),
        test_csv,
    )
    get_adapter(competition).run(answer, test_csv, on_serving)
