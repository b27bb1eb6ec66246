"""The offline wheel set: what Kaggle's GPU image already holds, what the kit must add, and a
check that the two resolve together before anything is uploaded.

Why: the competition notebook has no internet, so every package the kit needs beyond Kaggle's
image travels as a wheels dataset and is installed with `pip --no-index --no-deps`. A wheel set
that needs something the image lacks fails on Kaggle; one that replaces an image package (torch
above all) breaks whatever else relies on it. Both are decided here, offline:

- `data/kaggle_image.json`: the image record (Python, torch, CUDA, every package of the base
  image's freeze, the Kaggle layer's changes, the versions left unknown), with its sources;
  `python -m kaggle_submission.wheelset image refresh` rebuilds it from git checkouts of
  Kaggle/docker-python and googlecolab/backend-info.
- `requirements.txt`: exactly the wheels to add or change (pinned; roots marked `# root`).
- `data/wheel_metadata.json`: the Requires-Dist of those wheels and of the image packages in
  vLLM's dependency graph (a few hundred KB instead of GBs of wheels), refreshed from PyPI by
  `python -m kaggle_submission.wheelset metadata refresh`.
- `check`: pip's own resolver on a local index of tiny wheels (only metadata, markers evaluated
  for Kaggle's Python 3.12 on linux x86_64), image versions as constraints. It lists every
  package the install adds or changes and fails on a conflict, on a missing or unneeded wheel,
  and on touching torch. `python -m kaggle_submission.wheelset check --wheels dist/wheels`
  runs it on the real downloaded set.

The notebook side (`dry_run_plan`) reads pip's `--dry-run --report` on the real image. Standard
library only at import: the notebook's install cell imports this before any wheel is in.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
IMAGE_RECORD = REPO / "data" / "kaggle_image.json"
WHEEL_METADATA = REPO / "data" / "wheel_metadata.json"
REQUIREMENTS = REPO / "requirements.txt"

KAGGLE_PYTHON = "3.12"
KAGGLE_GLIBC_MINOR = 35  # Ubuntu 22.04
PLATFORMS: tuple[str, ...] = (
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(KAGGLE_GLIBC_MINOR, 4, -1)),
)
"""Every platform tag Kaggle's glibc runs (pip expands only manylinux2014 -> 2010 -> 1)."""

PROTECTED: tuple[str, ...] = ("torch", "torchvision", "torchaudio", "triton")
"""Image packages the wheel set must never change: the image's CUDA build of torch and its
companions (image packages named nvidia-*-cu12 are protected too: torch's CUDA libraries)."""

_NVIDIA_CUDA = re.compile(r"^nvidia-.*-cu1\d$")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*(?:#\s*(.*))?$")


class WheelSetError(RuntimeError):
    """The wheel set does not resolve against the image (the message says what and why)."""


def canonical(name: str) -> str:
    """PEP 503 name: runs of -_. become one dash, lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_protected(name: str, image: Mapping[str, str] | None = None) -> bool:
    name = canonical(name)
    return name in PROTECTED or (
        bool(_NVIDIA_CUDA.match(name)) and (image is None or name in image)
    )


# ------------------------------------------------------------------------------ requirements


@dataclass(frozen=True)
class Pin:
    """One line of the curated requirements: `name==version  # root: why` (roots are what the
    kit itself imports; every other line must be needed by a root)."""

    name: str
    version: str
    root: bool = False
    note: str = ""

    @property
    def key(self) -> str:
        return canonical(self.name)


def parse_requirements(text: str) -> list[Pin]:
    """Exact pins only: a range would let the download and the check pick different wheels."""
    pins: list[Pin] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if not match:
            raise WheelSetError(f"requirements line {number}: {line!r} is not `name==version`")
        note = (match.group(3) or "").strip()
        pins.append(Pin(match.group(1), match.group(2), note.startswith("root"), note))
    seen: set[str] = set()
    for pin in pins:
        if pin.key in seen:
            raise WheelSetError(f"requirements: {pin.name} is pinned twice")
        seen.add(pin.key)
    return pins


# ------------------------------------------------------------------------------ the image record


@dataclass(frozen=True)
class ImageRecord:
    """Kaggle's GPU image as read from its public build files (see data/kaggle_image.json)."""

    python: str
    packages: Mapping[str, str]
    """canonical name -> version (base image freeze with the Kaggle layer's exact pins)."""
    unknown: Mapping[str, str] = field(default_factory=dict)
    """canonical name -> evidence, where the sources give no exact version after Kaggle's layer
    (the version in `packages`, if any, is the base image's: an assumption)."""
    source: Mapping[str, Any] = field(default_factory=dict)

    @property
    def torch(self) -> str:
        return self.packages["torch"]


def load_image(path: Path = IMAGE_RECORD) -> ImageRecord:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return ImageRecord(
        python=data["python"],
        packages={canonical(k): v for k, v in data["packages"].items()},
        unknown={canonical(k): v for k, v in data.get("unknown", {}).items()},
        source=data.get("source", {}),
    )


def _git(gitdir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(gitdir), *args], check=True, capture_output=True, text=True
    ).stdout


def _freeze_line(line: str) -> tuple[str, str | None] | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if "==" in line:
        name, version = line.split("==", 1)
        return name.strip(), version.strip()
    if " @ " in line:  # a direct URL: the version is in a wheel's file name, else unknown
        name, url = line.split(" @ ", 1)
        filename = url.split("#", 1)[0].rsplit("/", 1)[-1]
        if filename.endswith(".whl"):
            return name.strip(), filename.split("-")[1]
        return name.strip(), None
    return None


def refresh_image(docker_python: Path, backend_info: Path, today: str | None = None) -> dict:
    """The image record from git checkouts (bare or not) of Kaggle/docker-python and
    googlecolab/backend-info: Kaggle's GPU Dockerfile names the Colab base image by date; the
    base image's `pip freeze` is the last backend-info commit on or before that date; Kaggle's
    layer then installs kaggle_requirements.txt and a few exact pins on top."""
    head = _git(docker_python, "log", "-1", "--format=%H %cs").split()
    dockerfile = _git(docker_python, "show", f"{head[0]}:Dockerfile.tmpl")
    gpu = re.search(r'Accelerator "gpu" }}\s*FROM (\S+)', dockerfile)
    if not gpu:
        raise WheelSetError("Dockerfile.tmpl: no GPU FROM line")
    base = gpu.group(1)
    stamp = re.search(r"_(\d{8})-\d{6}", base)
    if not stamp:
        raise WheelSetError(f"base image {base}: no release date in its tag")
    day = stamp.group(1)
    until = f"{day[:4]}-{day[4:6]}-{day[6:]} 23:59:59"
    colab = _git(
        backend_info, "log", "-1", f"--until={until}", "--format=%H %cs", "--", "pip-freeze.gpu.txt"
    ).split()
    freeze = _git(backend_info, "show", f"{colab[0]}:pip-freeze.gpu.txt")
    os_info = _git(backend_info, "show", f"{colab[0]}:os-info-gpu.txt")
    kaggle_req = _git(docker_python, "show", f"{head[0]}:kaggle_requirements.txt")

    packages: dict[str, str] = {}
    unknown: dict[str, str] = {}
    for line in freeze.splitlines():
        parsed = _freeze_line(line)
        if parsed is None:
            continue
        name, version = parsed
        if version is None:
            unknown[canonical(name)] = f"base freeze: {line.strip()} (no version)"
        else:
            packages[canonical(name)] = version
    layer = "Kaggle layer (`uv pip install -r kaggle_requirements.txt`, keeps a satisfying version)"
    for line in kaggle_req.splitlines():
        spec = line.split("#", 1)[0].strip()
        if not spec or spec.startswith("git+"):
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$", spec)
        if not match:
            continue
        name, pin = canonical(match.group(1)), match.group(3).strip()
        if pin.startswith("==") and "," not in pin:
            if packages.get(name, "").split("+")[0] != pin[2:]:  # 0.10.0+cu128 satisfies ==0.10.0
                packages[name] = pin[2:]
            continue
        base_version = packages.get(name)
        where = f"base freeze {base_version}" if base_version else "not in the base freeze"
        unknown[name] = f"{layer}: `{spec}`; {where}"
    # Dockerfile RUN lines that pin or force-reinstall on top of the layer.
    for spec in re.findall(r'"([A-Za-z0-9._-]+(?:==|>=|<)[^"]*)"', dockerfile):
        match = re.match(r"^([A-Za-z0-9._-]+)(.*)$", spec)
        assert match is not None
        name, pin = canonical(match.group(1)), match.group(2)
        if pin.startswith("==") and "," not in pin:
            packages[name] = pin[2:]
            unknown.pop(name, None)
        else:
            unknown[name] = (
                f"Dockerfile force-reinstall `{spec}`: the newest in range at build time"
            )
    python = re.search(r"Python (\d+\.\d+\.\d+)", os_info)
    system = [ln for ln in os_info.splitlines() if ln and not ln.startswith("#")]
    torch = packages.get("torch", "")
    return {
        "about": (
            "Kaggle's GPU notebook image, from its public build files (not from a running "
            "session): the base image's pip freeze with Kaggle's layer on top. `unknown` lists "
            "packages whose exact version after Kaggle's layer the sources do not give; the "
            "notebook's dry run on the real image is the final word. Refresh: python -m "
            "kaggle_submission.wheelset image refresh --docker-python DIR --backend-info DIR"
        ),
        "recorded": today or time.strftime("%Y-%m-%d"),
        "source": {
            "kaggle_dockerfile": {
                "repo": "Kaggle/docker-python",
                "commit": head[0],
                "date": head[1],
                "files": ["Dockerfile.tmpl", "kaggle_requirements.txt"],
            },
            "base_image": base,
            "base_freeze": {
                "repo": "googlecolab/backend-info",
                "commit": colab[0],
                "date": colab[1],
                "files": ["pip-freeze.gpu.txt", "os-info-gpu.txt"],
                "why": f"last freeze commit on or before the base image's date {day}",
            },
        },
        "os": system[0] if system else "unknown",
        "python": python.group(1) if python else "unknown",
        "torch": torch,
        "cuda": f"12.{torch.split('+cu12', 1)[1]}" if "+cu12" in torch else "unknown",
        "numpy": packages.get("numpy", "unknown"),
        "transformers": packages.get("transformers", "unknown"),
        "packages": dict(sorted(packages.items())),
        "unknown": dict(sorted(unknown.items())),
    }


# ------------------------------------------------------------------------------ wheel metadata


@dataclass(frozen=True)
class WheelMeta:
    """What the resolver needs of one wheel: its file name (tags), name, version and
    requirements. size/sha256 when known (for the figures and the download check)."""

    filename: str
    name: str
    version: str
    requires_dist: tuple[str, ...] = ()
    requires_python: str | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def key(self) -> str:
        return canonical(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WheelMeta:
        return cls(**{**data, "requires_dist": tuple(data.get("requires_dist", ()))})


def read_wheel(path: Path) -> WheelMeta:
    """A real wheel's METADATA (only the zip directory and one member are read)."""
    with zipfile.ZipFile(path) as wheel:
        names = [n for n in wheel.namelist() if re.match(r"^[^/]+\.dist-info/METADATA$", n)]
        if len(names) != 1:
            raise WheelSetError(f"{path.name}: expected one .dist-info/METADATA")
        text = wheel.read(names[0]).decode("utf-8")
    msg = email.parser.Parser().parsestr(text, headersonly=True)
    return WheelMeta(
        filename=path.name,
        name=msg["Name"],
        version=msg["Version"],
        requires_dist=tuple(msg.get_all("Requires-Dist") or ()),
        requires_python=msg.get("Requires-Python"),
        size=path.stat().st_size,
    )


def load_metadata(path: Path = WHEEL_METADATA) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data["wheels"] = [WheelMeta.from_dict(w) for w in data["wheels"]]
    data["image"] = [WheelMeta.from_dict(w) for w in data["image"]]
    return data


def target_environment(python: str = KAGGLE_PYTHON) -> dict[str, str]:
    """Marker values of Kaggle's interpreter (pip evaluates markers for the interpreter it runs
    on, whatever --python-version says, so the fake index carries them already evaluated)."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "os_name": "posix",
        "platform_machine": "x86_64",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_release": "",
        "platform_version": "",
        "python_full_version": f"{python}.0",
        "python_version": python,
        "sys_platform": "linux",
    }


def effective_requires(
    requires_dist: Iterable[str], python: str = KAGGLE_PYTHON
) -> dict[str, list[str]]:
    """{extra ("" for none): [marker-free requirement]} for Kaggle's interpreter."""
    from packaging.requirements import Requirement

    env = target_environment(python)
    extras: set[str] = {""}
    parsed = [Requirement(r) for r in requires_dist]
    for req in parsed:
        if req.marker is not None:
            extras |= set(re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", str(req.marker)))
    out: dict[str, list[str]] = {}
    for extra in sorted(extras):
        for req in parsed:
            if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
                continue
            if extra and (req.marker is None or "extra" not in str(req.marker)):
                continue  # unconditional requirements go under ""
            names = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            out.setdefault(extra, []).append(f"{req.name}{names}{req.specifier}")
    return out


def write_fake_wheel(directory: Path, meta: WheelMeta, python: str = KAGGLE_PYTHON) -> Path:
    """A wheel holding only metadata, named like the real one (so pip checks its tags)."""
    requires = effective_requires(meta.requires_dist, python)
    lines = ["Metadata-Version: 2.1", f"Name: {meta.name}", f"Version: {meta.version}"]
    if meta.requires_python:
        lines.append(f"Requires-Python: {meta.requires_python}")
    for extra in sorted(e for e in requires if e):
        lines.append(f"Provides-Extra: {extra}")
    for extra, reqs in sorted(requires.items()):
        for req in reqs:
            lines.append(
                f'Requires-Dist: {req}; extra == "{extra}"' if extra else f"Requires-Dist: {req}"
            )
    dist_info = f"{meta.name.replace('-', '_')}-{meta.version}.dist-info"
    files = {
        f"{dist_info}/METADATA": "\n".join(lines) + "\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: aimo-kit\nRoot-Is-Purelib: true\n",
    }
    files[f"{dist_info}/RECORD"] = (
        "".join(f"{name},,\n" for name in files) + f"{dist_info}/RECORD,,\n"
    )
    path = directory / meta.filename
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def public(version: str) -> str:
    """The version without its local part (2.10.0+cu128 -> 2.10.0)."""
    return version.split("+", 1)[0]


def image_wheel(name: str, version: str) -> WheelMeta:
    return WheelMeta(f"{name.replace('-', '_')}-{version}-py3-none-any.whl", name, version)


# ------------------------------------------------------------------------------ pip


def clean_pip_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """No configuration from this machine: no pip.conf (find-links, constraints, indexes) and
    no PIP_* variables, so the resolution depends on the inputs alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env.update(extra or {})
    return env


def target_options(python: str = KAGGLE_PYTHON, platforms: Sequence[str] = PLATFORMS) -> list[str]:
    abi = "cp" + python.replace(".", "")
    options = ["--python-version", python, "--implementation", "cp", "--only-binary=:all:"]
    for tag in (abi, "abi3", "none"):
        options += ["--abi", tag]
    for platform in platforms:
        options += ["--platform", platform]
    return options


def pip_error(stdout: str, stderr: str) -> str:
    """pip's reason: the "conflict is caused by" paragraph (stdout) and its ERROR lines."""
    reason = ""
    if "The conflict is caused by" in stdout:
        reason = stdout[stdout.index("The conflict is caused by") :].split("\n\n")[0] + "\n"
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "notice]" not in ln]
    return reason + "\n".join(lines[-15:])


# ------------------------------------------------------------------------------ the check


@dataclass(frozen=True)
class Change:
    name: str
    image: str | None
    version: str
    size: int | None = None

    @property
    def kind(self) -> str:
        return "add" if self.image is None else "change"


@dataclass(frozen=True)
class CheckResult:
    """What the install would do to the image, and what is wrong with the set."""

    changes: tuple[Change, ...]
    kept: tuple[tuple[str, str], ...]
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    seconds: float
    pip_report: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def wheel_bytes(self) -> int:
        return sum(c.size or 0 for c in self.changes)

    def render(self) -> str:
        lines = [f"{'package':<36} {'image':<18} {'install':<18} {'size':>10}"]
        for c in sorted(self.changes, key=lambda c: (c.kind, c.name)):
            size = f"{c.size / 1e6:.1f} MB" if c.size else "?"
            lines.append(f"{c.name:<36} {c.image or '-':<18} {c.version:<18} {size:>10}")
        added = sum(c.kind == "add" for c in self.changes)
        lines.append(
            f"{len(self.changes)} wheels ({added} added, {len(self.changes) - added} changed), "
            f"{self.wheel_bytes / 1e9:.2f} GB; {len(self.kept)} image packages used as they are; "
            f"resolved in {self.seconds:.1f} s"
        )
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"ERROR: {e}" for e in self.errors]
        lines.append("OK: the set resolves against the image" if self.ok else "FAILED")
        return "\n".join(lines)


def check(
    pins: Sequence[Pin],
    wheels: Sequence[WheelMeta],
    image: ImageRecord,
    image_metadata: Sequence[WheelMeta] = (),
    python: str = sys.executable,
) -> CheckResult:
    """Resolve the pinned set with pip against the image record, offline.

    The index holds a metadata-only wheel per wheel of the set and per image package (the image
    package's real Requires-Dist where `image_metadata` has it, so extras such as
    `fastapi[standard]` are followed); every image package not pinned in `pins` is constrained
    to its image version. pip's resolver then either finds one consistent set or says why not.
    """
    started = time.monotonic()
    errors: list[str] = []
    warnings: list[str] = []
    by_key = {p.key: p for p in pins}
    for pin in pins:
        if is_protected(pin.key, image.packages):
            errors.append(
                f"{pin.name}=={pin.version} is pinned: {pin.name} must stay the image's "
                f"({image.packages.get(pin.key, 'absent')}), never part of the wheel set"
            )
        elif image.packages.get(pin.key) == pin.version and pin.key not in image.unknown:
            errors.append(f"{pin.name}=={pin.version} is already in the image: drop it")
    if not any(p.root for p in pins):
        errors.append("no requirement is marked `# root`")
    wheel_keys: dict[str, WheelMeta] = {}
    for wheel in wheels:
        pin = by_key.get(wheel.key)
        if pin is None:
            errors.append(f"{wheel.filename}: not in the requirements (a stray wheel)")
        elif pin.version != wheel.version:
            errors.append(f"{wheel.filename}: the requirements pin {pin.name}=={pin.version}")
        wheel_keys[wheel.key] = wheel
    for pin in pins:
        if pin.key not in wheel_keys:
            errors.append(f"{pin.name}=={pin.version}: no wheel (nor metadata) for it")
    if errors:
        return CheckResult((), (), tuple(errors), (), time.monotonic() - started)

    with tempfile.TemporaryDirectory(prefix="wheelset-") as tmp:
        root = Path(tmp)
        index = root / "index"
        index.mkdir()
        known = {(w.key, w.version): w for w in image_metadata}
        for wheel in wheels:
            write_fake_wheel(index, wheel)
        for name, version in image.packages.items():
            if (name, version) in {(w.key, w.version) for w in wheels}:
                continue
            write_fake_wheel(index, known.get((name, version)) or image_wheel(name, version))
        requirements = root / "requirements.txt"
        requirements.write_text("".join(f"{p.name}=={p.version}\n" for p in pins))
        constraints = root / "constraints.txt"
        constraints.write_text(
            "".join(f"{n}=={v}\n" for n, v in image.packages.items() if n not in by_key)
        )
        report_path = root / "report.json"
        command = [
            python,
            "-m",
            "pip",
            "--isolated",
            "--disable-pip-version-check",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-index",
            "--find-links",
            str(index),
            *target_options(),
            "-r",
            str(requirements),
            "-c",
            str(constraints),
            "--report",
            str(report_path),
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=clean_pip_env())
        if done.returncode != 0:
            reason = pip_error(done.stdout, done.stderr)
            return CheckResult(
                (),
                (),
                (f"pip cannot resolve the set against the image:\n{reason}",),
                (),
                time.monotonic() - started,
            )
        report = json.loads(report_path.read_text())

    resolved: dict[str, tuple[str, list[str]]] = {}
    for item in report["install"]:
        meta = item["metadata"]
        resolved[canonical(meta["name"])] = (meta["version"], meta.get("requires_dist") or [])
    changes: list[Change] = []
    kept: list[tuple[str, str]] = []
    for name, (version, _) in sorted(resolved.items()):
        before = image.packages.get(name)
        if before == version and name not in by_key:
            kept.append((name, version))
            if name in image.unknown:
                warnings.append(
                    f"{name} {version} is assumed from the image: {image.unknown[name]}"
                )
            continue
        if name not in by_key:
            errors.append(f"{name} {version} would be installed but is not in the requirements")
        if before is not None and is_protected(name, image.packages):
            errors.append(f"{name} would change from the image's {before} to {version}")
        size = wheel_keys[name].size if name in wheel_keys else None
        changes.append(Change(name, before, version, size))

    # Every pin must be needed: reachable from a root through resolved requirements.
    from packaging.requirements import Requirement

    env = target_environment()
    reach: list[tuple[str, tuple[str, ...]]] = [(p.key, ()) for p in pins if p.root]
    seen = {item for item in reach}
    while reach:
        name, extras = reach.pop()
        for text in resolved.get(name, ("", []))[1]:
            req = Requirement(text)
            if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras)
            ):
                continue
            item = (canonical(req.name), tuple(sorted(req.extras)))
            if item not in seen:
                seen.add(item)
                reach.append(item)
    needed = {name for name, _ in seen}
    for pin in pins:
        if pin.key not in needed:
            errors.append(f"{pin.name}=={pin.version} is not needed by any root")
    return CheckResult(
        tuple(changes),
        tuple(kept),
        tuple(errors),
        tuple(warnings),
        time.monotonic() - started,
        report,
    )


def check_files(
    requirements: Path = REQUIREMENTS,
    wheels_dir: Path | None = None,
    image_path: Path = IMAGE_RECORD,
    metadata_path: Path = WHEEL_METADATA,
) -> CheckResult:
    """The check on the committed metadata, or on a downloaded wheel set (`wheels_dir`)."""
    pins = parse_requirements(Path(requirements).read_text(encoding="utf-8"))
    metadata = load_metadata(metadata_path)
    if wheels_dir is None:
        wheels = metadata["wheels"]
    else:
        wheels = [read_wheel(p) for p in sorted(Path(wheels_dir).glob("*.whl"))]
    return check(pins, wheels, load_image(image_path), metadata["image"])


# ------------------------------------------------------------------------------ metadata refresh


def refresh_metadata(
    requirements: Path = REQUIREMENTS,
    image_path: Path = IMAGE_RECORD,
    index_url: str = "https://pypi.org/simple",
    interpreter: str = sys.executable,
) -> dict[str, Any]:
    """From PyPI (network): resolve the pinned set with the image's versions as constraints,
    keep the metadata of every resolved wheel (pip's report; PEP 658 metadata, no wheel bodies),
    and the size and sha256 of the wheels the set downloads. Also the unconstrained closure's
    size of vllm alone, the "before" figure. `interpreter` must be a Python 3.12 (pip runs for
    it with `--python`, so markers are evaluated as on Kaggle)."""
    import urllib.request

    found = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if found != KAGGLE_PYTHON:
        raise WheelSetError(f"{interpreter} is Python {found}: markers need {KAGGLE_PYTHON}")

    pins = parse_requirements(Path(requirements).read_text(encoding="utf-8"))
    image = load_image(image_path)
    keys = {p.key for p in pins}
    with tempfile.TemporaryDirectory(prefix="wheelset-") as tmp:
        root = Path(tmp)
        (root / "r.txt").write_text("".join(f"{p.name}=={p.version}\n" for p in pins))
        (root / "c.txt").write_text(  # PyPI has no +cu128 builds: their public versions
            "".join(f"{n}=={public(v)}\n" for n, v in image.packages.items() if n not in keys)
        )

        def resolve(*args: str) -> dict[str, Any]:
            command = [
                sys.executable,
                "-m",
                "pip",
                "--isolated",
                "--python",
                interpreter,
                "install",
                "--dry-run",
                "--ignore-installed",
                "--index-url",
                index_url,
                *target_options(),
                "--report",
                str(root / "report.json"),
                "--quiet",
                *args,
            ]
            done = subprocess.run(command, capture_output=True, text=True, env=clean_pip_env())
            if done.returncode != 0:
                raise WheelSetError(
                    f"pip could not resolve:\n{pip_error(done.stdout, done.stderr)}"
                )
            return json.loads((root / "report.json").read_text())

        report = resolve("-r", str(root / "r.txt"), "-c", str(root / "c.txt"))
        roots = [f"{p.name}=={p.version}" for p in pins if p.root]
        closure = resolve(*roots)

    def file_info(url: str) -> tuple[str, int | None, str | None]:
        name = url.rsplit("/", 1)[-1]
        project = canonical(name.split("-")[0])
        request = urllib.request.Request(
            f"{index_url}/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
        for f in files:
            if f["filename"] == name:
                return name, f.get("size"), f.get("hashes", {}).get("sha256")
        return name, None, None

    wheels: list[dict[str, Any]] = []
    image_meta: list[dict[str, Any]] = []
    for item in report["install"]:
        meta = item["metadata"]
        key, version = canonical(meta["name"]), meta["version"]
        url = item["download_info"]["url"]
        entry = WheelMeta(
            filename=url.rsplit("/", 1)[-1],
            name=meta["name"],
            version=version,
            requires_dist=tuple(meta.get("requires_dist") or ()),
            requires_python=meta.get("requires_python"),
        )
        if key in keys:
            _, size, sha = file_info(url)
            wheels.append(WheelMeta(**{**entry.__dict__, "size": size, "sha256": sha}).to_dict())
        elif public(image.packages.get(key, "")) == version:
            version = image.packages[key]  # the image's own build (2.10.0+cu128)
            fake = image_wheel(meta["name"], version)
            image_meta.append(
                WheelMeta(
                    **{**entry.__dict__, "filename": fake.filename, "version": version}
                ).to_dict()
            )
        else:
            raise WheelSetError(f"{key} {version} resolved but is neither pinned nor the image's")
    return {
        "about": (
            "Requires-Dist of the wheel set (requirements.txt) and of the image packages in its "
            "dependency graph, as PyPI serves them (PEP 658 metadata), for the offline check. "
            "Refresh: python -m kaggle_submission.wheelset metadata refresh"
        ),
        "recorded": time.strftime("%Y-%m-%d"),
        "index": index_url,
        "roots_closure": {
            "roots": roots,
            "wheels": len(closure["install"]),
            "note": "pip's unconstrained resolution of the roots alone (the old --wheels "
            "download: every dependency, torch and the CUDA libraries included)",
        },
        "wheels": sorted(wheels, key=lambda w: canonical(w["name"])),
        "image": sorted(image_meta, key=lambda w: canonical(w["name"])),
    }


# ------------------------------------------------------------------------------ the notebook side


@dataclass(frozen=True)
class InstallPlan:
    """What pip's dry run on the real image would install: (name, installed or None, new)."""

    installs: tuple[tuple[str, str | None, str], ...]

    def describe(self) -> str:
        if not self.installs:
            return "nothing to install: the image already has every pinned version"
        return "\n".join(f"  {name} {old or '(new)'} -> {new}" for name, old, new in self.installs)


def dry_run_plan(
    report: Mapping[str, Any], pins: Sequence[Pin], installed: Mapping[str, str]
) -> InstallPlan:
    """Check pip's dry-run report on the real image: everything it would install must be a
    pinned line (the real install runs with --no-deps) and nothing protected may change."""
    by_key = {p.key: p for p in pins}
    installs: list[tuple[str, str | None, str]] = []
    problems: list[str] = []
    for item in report.get("install", []):
        meta = item["metadata"]
        key, version = canonical(meta["name"]), meta["version"]
        old = installed.get(key)
        if key not in by_key:
            problems.append(
                f"{meta['name']} {version} would be installed but is not in the requirements "
                "(the wheel set is incomplete for this image)"
            )
        if old is not None and is_protected(key, installed):
            problems.append(f"{meta['name']} would change from the image's {old} to {version}")
        installs.append((meta["name"], old, version))
    if problems:
        raise WheelSetError("the wheel set does not fit this image:\n  " + "\n  ".join(problems))
    return InstallPlan(tuple(installs))


_LIST_INSTALLED = (
    "import json\nfrom importlib import metadata\nout = {}\n"
    "for d in metadata.distributions():\n"
    "    if d.metadata['Name']: out.setdefault(d.metadata['Name'], d.version)\n"
    "print(json.dumps(out))"
)


def installed_versions(python: str = sys.executable) -> dict[str, str]:
    """canonical name -> version of every distribution `python` sees (a fresh process: what
    is on disk now, not what this process imported)."""
    done = subprocess.run(
        [python, "-c", _LIST_INSTALLED], capture_output=True, text=True, check=True
    )
    return {canonical(k): v for k, v in json.loads(done.stdout).items()}


# ------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kaggle_submission.wheelset", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    img = sub.add_parser("image", help="the Kaggle image record")
    img.add_argument("action", choices=["refresh", "show"])
    img.add_argument("--docker-python", type=Path, help="git dir of Kaggle/docker-python")
    img.add_argument("--backend-info", type=Path, help="git dir of googlecolab/backend-info")
    img.add_argument("--out", type=Path, default=IMAGE_RECORD)
    meta = sub.add_parser("metadata", help="the wheel metadata the offline check reads")
    meta.add_argument("action", choices=["refresh"])
    meta.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    meta.add_argument("--out", type=Path, default=WHEEL_METADATA)
    meta.add_argument("--index-url", default="https://pypi.org/simple")
    meta.add_argument("--python", default=sys.executable, help="a Python 3.12 interpreter")
    chk = sub.add_parser("check", help="resolve the set against the image, offline")
    chk.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    chk.add_argument("--wheels", type=Path, help="a downloaded wheel set (default: metadata)")
    chk.add_argument("--image", type=Path, default=IMAGE_RECORD)
    chk.add_argument("--metadata", type=Path, default=WHEEL_METADATA)
    args = parser.parse_args(argv)

    if args.command == "image":
        if args.action == "show":
            print(args.out.read_text(encoding="utf-8"))
            return 0
        if not (args.docker_python and args.backend_info):
            parser.error("image refresh needs --docker-python and --backend-info")
        record = refresh_image(args.docker_python, args.backend_info)
        args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(
            f"wrote {args.out}: Python {record['python']}, torch {record['torch']}, "
            f"{len(record['packages'])} packages, {len(record['unknown'])} unknown"
        )
        return 0
    if args.command == "metadata":
        data = refresh_metadata(
            args.requirements, index_url=args.index_url, interpreter=args.python
        )
        args.out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(
            f"wrote {args.out}: {len(data['wheels'])} wheels, {len(data['image'])} image "
            f"packages; the roots alone pull {data['roots_closure']['wheels']} wheels"
        )
        return 0
    result = check_files(args.requirements, args.wheels, args.image, args.metadata)
    print(result.render())
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
