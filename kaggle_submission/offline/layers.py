"""The kit's import graph, read from the syntax trees (nothing is imported), and the layer rules.

Why: the layers (docs/architecture.md) only hold if something fails when an import points the
wrong way, and the notebook should carry only the modules the Kaggle path can reach. Both read
this one graph: `tests/test_layers.py` checks the rules, `build_kernel.package_files` embeds
`kaggle_closure()`.

Every import counts, including those inside functions and under `if TYPE_CHECKING:`; relative
imports are resolved; `from pkg import name` is an edge to `pkg.name` when that is a module.
Edges an import statement does not show are read too: `importlib.import_module("literal")`, a
module launched by path (`f"{__package__}.worker"` or a literal `"kaggle_submission.x"`), and a
registry (a module-level dict in a package `__init__` whose values name that package's
submodules, such as `competition.ADAPTERS` and the backends' registry).
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "kaggle_submission"
ENTRY = f"{PACKAGE}.notebook_main"
"""What the notebook imports (its run cell); the Kaggle path is what this reaches."""

OFFLINE = f"{PACKAGE}.offline"
CLI_MAIN = f"{PACKAGE}.__main__"
TRAINING = "training"

PURE_CORE: frozenset[str] = frozenset(
    f"{PACKAGE}.{name}"
    for name in (
        "answers",
        "prompts",
        "config",
        "stopping",
        "budget",
        "traces",
        "protocols",
        "protocols.base",
        "protocols.numina",
        "protocols.openmath_tir",
        "protocols.chat_cot",
    )
)
"""Layer 1: imports in milliseconds, no heavy dependency, nothing above it."""

BACKENDS = f"{PACKAGE}.backends"
BACKEND_PROTOCOL = f"{BACKENDS}.base"
KAGGLE_BACKENDS = "KAGGLE_BACKENDS"
"""The set in `backends/__init__.py` naming the registry's backends that run in the notebook;
the others (the OpenAI-server client, the replay and scripted test doubles) are not embedded."""
TEST_DOUBLE_BACKENDS: frozenset[str] = frozenset({"replay", "scripted"})
"""Left out when the registry has no KAGGLE_BACKENDS set (the notebook's end-to-end test runs
on transformers, so it needs no double)."""

HEAVY: frozenset[str] = frozenset(
    {"torch", "vllm", "transformers", "numpy", "polars", "pandas", "sympy", "triton"}
)

_STDLIB: frozenset[str] = frozenset(getattr(sys, "stdlib_module_names", ())) | {"__future__"}


@dataclass(frozen=True)
class Edge:
    """One import: `source` (a kit module) needs `target` (any module, kit or not).

    kind: "import" (a statement), "dynamic" (importlib), "launch" (a module run as its own
    program, `python -m NAME`: needed at run time, but no import) or "registry" (named by
    `key` in a package's registry dict). type_checking: under
    `if TYPE_CHECKING:` (needed by no running code, so it does not make a cycle).
    """

    source: str
    target: str
    line: int
    kind: str = "import"
    key: str | None = None
    type_checking: bool = False


@dataclass(frozen=True)
class Violation:
    rule: str
    source: str
    target: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.source}:{self.line} -> {self.target}: {self.why}"


@dataclass(frozen=True)
class ImportGraph:
    """Modules (dotted name -> file) of the scanned packages and their imports."""

    root: Path
    modules: Mapping[str, Path]
    edges: tuple[Edge, ...]
    path_inserts: tuple[Edge, ...] = ()
    """`sys.path.insert/append` calls whose argument mentions `training` (target: the text)."""
    kaggle_backends: frozenset[str] | None = None
    """The backends registry's KAGGLE_BACKENDS names (None: the registry has no such set)."""

    def imports(self, source: str) -> list[Edge]:
        return [e for e in self.edges if e.source == source]

    def kit_target(self, target: str) -> str | None:
        """The scanned module an import target lands in (itself or its nearest parent)."""
        name = target
        while name:
            if name in self.modules:
                return name
            name = name.rpartition(".")[0]
        return None

    def closure(self, roots: Iterable[str], follow=lambda edge: True) -> set[str]:
        """Modules reachable from `roots`, with each module's parent packages (importing
        `a.b.c` runs `a/__init__` and `a/b/__init__` first)."""
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in seen or name not in self.modules:
                continue
            seen.add(name)
            parent = name.rpartition(".")[0]
            if parent:
                todo.append(parent)
            for edge in self.imports(name):
                if not follow(edge):
                    continue
                target = self.kit_target(edge.target)
                if target is not None:
                    todo.append(target)
        return seen

    def cycles(self, within: str = "") -> list[list[str]]:
        """Import cycles among scanned modules whose names start with `within` (strongly
        connected components of more than one module, or a module importing itself). Implicit
        parent-package edges, TYPE_CHECKING imports and launched programs do not count."""
        graph: dict[str, set[str]] = {m: set() for m in self.modules if m.startswith(within)}
        for edge in self.edges:
            target = self.kit_target(edge.target)
            if edge.type_checking or edge.kind == "launch":  # another process: no cycle
                continue
            if edge.source not in graph or target not in graph:
                continue
            if target == edge.source or not edge.source.startswith(target + "."):
                graph[edge.source].add(target)  # a module importing its own package: no cycle
        return [c for c in _components(graph) if len(c) > 1 or c[0] in graph[c[0]]]


_SCANS: dict[tuple[object, ...], ImportGraph] = {}


def scan(root: Path, packages: Iterable[str] = (PACKAGE, TRAINING)) -> ImportGraph:
    """Read every .py under `root/<package>` for each package present.

    A build reads the same tree several times (render, then validate): the graph is kept per
    root, package list and the files' sizes and modification times, so a changed file is read
    again."""
    packages = tuple(packages)
    files = _python_files(root, packages)
    key = (Path(root).resolve(), packages, *((str(p), *_stamp(p)) for p in files.values()))
    graph = _SCANS.get(key)
    if graph is None:
        graph = _SCANS[key] = _scan(root, files)
    return graph


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _python_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in packages:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root)
            if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _scan(root: Path, modules: dict[str, Path]) -> ImportGraph:
    edges: list[Edge] = []
    inserts: list[Edge] = []
    kaggle_backends = None
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        edges.extend(_module_edges(name, package, is_package, tree, modules))
        inserts.extend(_path_inserts(name, tree))
        if name == BACKENDS:
            kaggle_backends = _string_set(tree, KAGGLE_BACKENDS)
    return ImportGraph(
        root=root,
        modules=modules,
        edges=tuple(edges),
        path_inserts=tuple(inserts),
        kaggle_backends=kaggle_backends,
    )


def kaggle_closure(graph: ImportGraph) -> set[str]:
    """What the notebook must carry: the entry's import closure, following the registries'
    entries except the backends that do not run in the notebook."""
    kaggle = graph.kaggle_backends

    def follow(edge: Edge) -> bool:
        if edge.kind != "registry" or edge.source != BACKENDS:
            return True
        return edge.key in kaggle if kaggle is not None else edge.key not in TEST_DOUBLE_BACKENDS

    return graph.closure([ENTRY], follow)


def is_kaggle_path(module: str) -> bool:
    """The kit minus the offline tools and the CLI's `__main__`."""
    return (
        (module == PACKAGE or module.startswith(PACKAGE + "."))
        and not _under(module, OFFLINE)
        and module != CLI_MAIN
    )


# ------------------------------------------------------------------------------ the rules


def check(graph: ImportGraph) -> list[Violation]:
    """Every broken layer rule in the graph (empty: the layers hold)."""
    out: list[Violation] = []
    kit = [m for m in graph.modules if _under(m, PACKAGE)]
    for edge in graph.edges:
        if edge.source not in kit:
            continue
        top = edge.target.partition(".")[0]
        # 1. nothing in the kit imports training/ (an offline tool may run it as a program:
        #    the CLI builds the demo model with `python -m training.demo`, never on Kaggle)
        launched_offline = edge.kind == "launch" and not is_kaggle_path(edge.source)
        if top == TRAINING and not launched_offline:
            out.append(_v("no-training", edge, "the kit never imports training/"))
        # 3. the Kaggle path never imports the offline tools
        if is_kaggle_path(edge.source) and _under(edge.target, OFFLINE):
            out.append(_v("no-offline", edge, "the Kaggle path never imports offline tools"))
        # 2. the backends' protocol knows no backend
        if edge.source == BACKEND_PROTOCOL and not _allowed_below(edge.target, graph):
            out.append(
                _v("protocol", edge, "the backend protocol imports only stdlib and the pure core")
            )
        # 4. the pure core: no heavy dependency, nothing above it
        if edge.source in PURE_CORE:
            if top in HEAVY:
                out.append(_v("pure-core", edge, "the pure core imports no heavy dependency"))
            target = graph.kit_target(edge.target)
            if target is not None and target not in PURE_CORE and target != PACKAGE:
                out.append(_v("pure-core", edge, "the pure core imports nothing above it"))
    for edge in graph.path_inserts:
        if _under(edge.source, PACKAGE):
            out.append(_v("no-training", edge, "no sys.path entry for training/"))
    for cycle in graph.cycles():
        first = cycle[0]
        out.append(Violation("no-cycle", first, " -> ".join(cycle), 0, "imports form a cycle"))
    return out


def _allowed_below(target: str, graph: ImportGraph) -> bool:
    top = target.partition(".")[0]
    if top in _STDLIB:
        return True
    kit = graph.kit_target(target)
    return kit is not None and (kit in PURE_CORE or kit == PACKAGE)


def _v(rule: str, edge: Edge, why: str) -> Violation:
    return Violation(rule, edge.source, edge.target, edge.line, why)


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# ------------------------------------------------------------------------------ reading imports


def _module_edges(
    name: str, package: str, is_package: bool, tree: ast.Module, modules: Mapping[str, Path]
) -> Iterator[Edge]:
    guarded = _type_checking_lines(tree)
    for node in ast.walk(tree):
        tc = getattr(node, "lineno", 0) in guarded
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(name, alias.name, node.lineno, type_checking=tc)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(package, node.level, node.module)
            if base is None:
                continue
            yield Edge(name, base, node.lineno, type_checking=tc)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    yield Edge(name, f"{base}.{alias.name}", node.lineno, type_checking=tc)
        elif isinstance(node, ast.Call) and _is_import_module(node):
            target = _literal_module(node, package)
            if target:
                yield Edge(name, target, node.lineno, kind="dynamic")
        elif isinstance(node, (ast.List, ast.Tuple)):
            target = _dash_m_module(node.elts)
            if target in modules:
                yield Edge(name, target, node.lineno, kind="launch")
        elif isinstance(node, ast.JoinedStr):
            target = _launched_module(node, name, package)
            if target in modules:
                yield Edge(name, target, node.lineno, kind="launch")
    if is_package:
        yield from _registry_edges(name, tree, modules)


def _resolve_from(package: str, level: int, module: str | None) -> str | None:
    if level == 0:
        return module
    parts = package.split(".")
    if level - 1 >= len(parts):
        return None
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            named = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            )
            if named:
                for child in node.body:
                    for sub in ast.walk(child):
                        if hasattr(sub, "lineno"):
                            lines.add(sub.lineno)
    return lines


def _is_import_module(node: ast.Call) -> bool:
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )


def _literal_module(node: ast.Call, package: str) -> str | None:
    if not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    text = node.args[0].value
    if not isinstance(text, str):
        return None
    if text.startswith("."):
        level = len(text) - len(text.lstrip("."))
        return _resolve_from(package, level, text.lstrip(".") or None)
    return text


def _dash_m_module(items: list[ast.expr]) -> str | None:
    """`[python, "-m", "kaggle_submission.x", ...]`: the module a command line runs."""
    for first, second in itertools.pairwise(items):
        named = isinstance(second, ast.Constant) and isinstance(second.value, str)
        if isinstance(first, ast.Constant) and first.value == "-m" and named:
            return second.value
    return None


def _launched_module(node: ast.JoinedStr, name: str, package: str) -> str | None:
    """`f"{__package__}.worker"` / `f"{__name__}.x"`: a module named relative to this one."""
    values = node.values
    if len(values) != 2 or not isinstance(values[0], ast.FormattedValue):
        return None
    tail = values[1]
    if not (isinstance(tail, ast.Constant) and isinstance(tail.value, str)):
        return None
    names = {n.id for n in ast.walk(values[0].value) if isinstance(n, ast.Name)}
    if "__package__" in names:
        base = package
    elif "__name__" in names:
        base = name
    else:
        return None
    if not tail.value.startswith("."):
        return None
    return base + tail.value


def _registry_edges(package: str, tree: ast.Module, modules: Mapping[str, Path]) -> Iterator[Edge]:
    """Module-level `{name: <something naming a submodule>}` dicts in a package `__init__`."""
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if not isinstance(value, ast.Dict):
            continue
        for key, item in zip(value.keys, value.values, strict=True):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                continue
            for text in (
                n.value
                for n in ast.walk(item)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ):
                target = _submodule(package, text, modules)
                if target:
                    yield Edge(package, target, item.lineno, kind="registry", key=key.value)
                    break


def _string_set(tree: ast.Module, name: str) -> frozenset[str] | None:
    """The strings of a module-level `NAME = frozenset({...})` / `{...}` / tuple, if any."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value:
            return frozenset(
                n.value
                for n in ast.walk(node.value)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            )
    return None


def _submodule(package: str, text: str, modules: Mapping[str, Path]) -> str | None:
    """The module `text` names ("mod", ".mod", "pkg.mod", "mod.Class", "mod:Class")."""
    text = text.partition(":")[0]
    relative = text.lstrip(".")
    candidates = [text, f"{package}.{relative}"]
    for candidate in list(candidates):
        candidates.append(candidate.rpartition(".")[0])
    for candidate in candidates:
        if candidate in modules and candidate != package and _under(candidate, package):
            return candidate
    return None


def _path_inserts(name: str, tree: ast.Module) -> Iterator[Edge]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        func = node.func
        if func.attr not in ("insert", "append") or ast.unparse(func.value) != "sys.path":
            continue
        texts = [ast.unparse(a) for a in node.args]
        if any(TRAINING in t for t in texts) or _names_repo(node, tree):
            yield Edge(name, ", ".join(texts), node.lineno, kind="sys.path")


def _names_repo(call: ast.Call, tree: ast.Module) -> bool:
    """A sys.path entry in a function that then imports training (the repository root)."""
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if not any(n is call for n in ast.walk(func)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import) and any(
                a.name.partition(".")[0] == TRAINING for a in node.names
            ):
                return True
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(TRAINING):
                return True
    return False


def _components(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    item = stack.pop()
                    on_stack.discard(item)
                    component.append(item)
                    if item == node:
                        break
                out.append(sorted(component))
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m kaggle_submission.offline.layers [ROOT]`: print broken rules and the closure."""
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[2])
    graph = scan(root)
    violations = check(graph)
    for v in violations:
        print(v)
    closure = sorted(kaggle_closure(graph))
    lines = sum(len(graph.modules[m].read_text().splitlines()) for m in closure)
    print(f"Kaggle path: {len(closure)} modules, {lines} lines")
    for name in closure:
        print(f"  {name}")
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
