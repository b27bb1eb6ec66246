"""build_kernel.py and the notebook it builds: structure, metadata, reproducibility, and the built
notebook executed end to end on CPU (tiny model, local gateway) like Kaggle would run it."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

nbformat = pytest.importorskip(
    "nbformat", reason="build_kernel needs nbformat (requirements-dev.txt)"
)

import build_kernel as bk  # noqa: E402
from kaggle_submission import manifest as mf  # noqa: E402
from kaggle_submission import notebook_main as nm  # noqa: E402
from kaggle_submission.backends import BACKENDS, KAGGLE_BACKENDS  # noqa: E402
from kaggle_submission.presets import PRESETS  # noqa: E402
from kaggle_submission.prompts import NUMINA as NUMINA_PROMPT  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SLUGS = {  # independent of the code under test: the competitions' pages on Kaggle
    "aimo1": "ai-mathematical-olympiad-prize",
    "aimo2": "ai-mathematical-olympiad-progress-prize-2",
    "aimo3": "ai-mathematical-olympiad-progress-prize-3",
}
NUMINA = "tester/numinamath-7b-tir-gptq/transformers/8bit-g128/3"
TINY = "tester/tiny-llama/transformers/default/1"


def package_modules() -> dict[str, str]:
    """Every .py file of the package, read here independently of build_kernel."""
    out = {}
    for root, dirs, names in os.walk(REPO / "kaggle_submission"):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        for name in names:
            if name.endswith(".py"):
                path = Path(root) / name
                out[path.relative_to(REPO).as_posix()] = path.read_text(encoding="utf-8")
    return out


KAGGLE_PATH = {  # what the notebook runs, named here independently of the import walker
    f"kaggle_submission/{name}.py"
    for name in (
        "__init__",
        "notebook_main",
        "kernel",
        "engine",
        "answers",
        "budget",
        "config",
        "presets",
        "protocols/__init__",
        "protocols/base",
        "protocols/numina",
        "protocols/openmath_tir",
        "protocols/chat_cot",
        "stopping",
        "traces",
        "manifest",
        "problems",
        "wheelset",
        "competition/__init__",
        "competition/aimo1",
        "competition/aimo2",
        "competition/aimo3",
        "competition/gateway",
        "backends/__init__",
        "backends/base",
        "backends/vllm_backend",
        "backends/transformers_backend",
    )
}
NOT_EMBEDDED = (  # offline tools and test doubles: never run on Kaggle
    "kaggle_submission/offline/",
    "kaggle_submission/backends/replay.py",
    "kaggle_submission/backends/scripted.py",
)


def embedded_files(nb) -> dict[str, str]:
    """What the notebook writes to disk, read back by running its file cells."""
    files: dict[str, str] = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and "\nKIT_FILES[" in cell.source:
            namespace = {"KIT_FILES": files}
            exec(compile(cell.source, cell.id, "exec"), namespace)
    return files


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    """A manifest with the GPU presets' model, sizes known (the repo's may still be a stub)."""
    entry = {
        "name": "numinamath-7b-tir-gptq",
        "description": "test entry",
        "source": {"hf_repo": "AI-MO/NuminaMath-7B-TIR-GPTQ", "revision": None},
        "kaggle": {"kind": "model", "handle": NUMINA},
        "quantization": {
            "method": "gptq",
            "bits": 8,
            "group_size": 128,
            "desc_act": True,
            "sym": True,
            "library": "auto-gptq",
            "library_version": "0.7.1",
        },
        "files": [{"path": "config.json", "size": 12}, {"path": "model.safetensors", "size": 34}],
        "prompt": {"format": "numina"},
        "presets": ["aimo1-t4x2", "aimo2-l4x4", "aimo3-h100"],
        "demo": False,
    }
    path = tmp_path / "weights_manifest.json"
    mf.parse_manifest({"schema_version": 1, "models": {entry["name"]: entry}}).save(path)
    return path


def options(preset: str, manifest: Path, **kw) -> bk.BuildOptions:
    return bk.BuildOptions(preset=preset, manifest=manifest, owner="tester", **kw)


# ------------------------------------------------------------------------------ the build


@pytest.mark.parametrize("preset", ["aimo1-t4x2", "aimo2-l4x4", "aimo3-h100", "demo-cpu"])
def test_build_each_preset(tmp_path, manifest_path, preset):
    out = tmp_path / "kernel"
    build = bk.build(options(preset, manifest_path), out)
    spec = PRESETS[preset]

    nb_path = out / f"aimo-kit-{preset}.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nbformat.validate(nb)
    assert all(c.get("outputs", []) == [] for c in nb.cells)
    assert len({c.id for c in nb.cells}) == len(nb.cells)

    # The Kaggle path's modules, byte for byte, and nothing else but the two runtime files.
    files = embedded_files(nb)
    modules = package_modules()
    kit = {k: v for k, v in files.items() if k.startswith("kaggle_submission/")}
    assert kit == {k: modules[k] for k in kit}
    assert kit == bk.package_files()
    assert set(files) - set(kit) == {"weights_manifest.json", "requirements.txt"}
    assert set(kit) >= KAGGLE_PATH
    assert not [k for k in kit if k.startswith(NOT_EMBEDDED)]
    for name, (module, _) in BACKENDS.items():  # the registry's Kaggle backends only
        assert (f"kaggle_submission/backends/{module}.py" in kit) is (name in KAGGLE_BACKENDS)
    assert "kaggle_submission/__main__.py" not in kit
    assert files["requirements.txt"] == (REPO / "requirements.txt").read_text()
    embedded_manifest = mf.parse_manifest(json.loads(files["weights_manifest.json"]))
    if spec.model == "demo":
        assert embedded_manifest.names() == []
    else:
        assert embedded_manifest.names() == [spec.model]
        assert embedded_manifest.get(spec.model) == mf.load_manifest(manifest_path).get(spec.model)

    # The cells, in order: header, source, writer, install, config, run.
    sources = [c.source for c in nb.cells]
    assert nb.cells[0].cell_type == "markdown" and preset in sources[0]
    is_file = ["\nKIT_FILES[" in s for s in sources]
    assert sum(is_file) == len(files)  # one cell per file

    def where(text: str) -> int:
        return next(i for i, s in enumerate(sources) if text in s and not is_file[i])

    first_file = is_file.index(True)
    assert all(is_file[first_file : first_file + len(files)])
    writer, install = where("write_kit(KIT_FILES"), where("install_requirements(")
    config, run = where("\nPRESET = "), where("notebook_main.main(")
    assert 0 < first_file < writer < install < config < run == len(sources) - 1
    assert 'if __name__ == "__main__":' in sources[run]
    namespace: dict = {}
    exec(sources[config], namespace)
    assert namespace["PRESET"] == preset and namespace["OVERRIDES"] == {}
    for i, source in enumerate(sources):
        if nb.cells[i].cell_type == "code":
            compile(source, f"cell {i}", "exec")
            assert not source.lstrip().startswith(("%", "!"))  # plain Python, no magics

    # kernel-metadata.json
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta == build.metadata
    assert meta["id"] == f"tester/aimo-kit-{preset}"
    assert meta["code_file"] == nb_path.name
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    assert meta["is_private"] is True
    assert meta["enable_internet"] is False
    assert meta["enable_gpu"] is (spec.hardware != "cpu")
    assert meta["competition_sources"] == [SLUGS[spec.competition]]
    assert "tester/aimo-kit-wheels" in meta["dataset_sources"]
    if spec.model == "demo":
        assert meta["model_sources"] == []
        assert "machine_shape" not in meta
    else:
        assert meta["model_sources"] == [NUMINA]
        expected_shape = {"t4x2": "NvidiaTeslaT4", "l4x4": "NvidiaL4", "h100x1": "NvidiaH100"}
        assert meta["machine_shape"] == expected_shape[spec.hardware]

    # Byte-identical on rebuild.
    again = tmp_path / "again"
    bk.build(options(preset, manifest_path), again)
    for name in (nb_path.name, "kernel-metadata.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_embedded_kit_imports_on_its_own(tmp_path):
    """The embedded modules are closed under import: each one imports in a fresh interpreter
    from the written copy alone (this checkout off the path), and nothing of the kit comes from
    elsewhere. The worker is launched with -m, so importing it must have no side effects either."""
    kit = tmp_path / "kit"
    for rel, text in bk.package_files().items():
        (kit / rel).parent.mkdir(parents=True, exist_ok=True)
        (kit / rel).write_text(text, encoding="utf-8")
    names = sorted(
        rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for rel in bk.package_files()
    )
    script = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({n: m.__file__ for n, m in sys.modules.items()\n"
        "                  if n.split('.')[0] == 'kaggle_submission'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(kit)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=kit, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert set(names) <= set(loaded)
    assert all(Path(f).is_relative_to(kit) for f in loaded.values()), loaded


def test_rebuild_in_fresh_processes_is_byte_identical(tmp_path, manifest_path):
    """Hash seeds and process state do not leak into the output."""
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        command = [sys.executable, str(REPO / "build_kernel.py"), "--preset", "aimo3-h100"]
        command += ["--out", str(out), "--owner", "tester", "--manifest", str(manifest_path)]
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) == {"aimo-kit-aimo3-h100.ipynb", "kernel-metadata.json"}


def test_model_source_comes_from_the_manifest_entry(tmp_path, manifest_path):
    manifest = mf.load_manifest(manifest_path)
    entry = manifest.get("numinamath-7b-tir-gptq")
    dataset = replace(entry, kaggle=mf.KaggleRef("dataset", "tester/numina-weights"))
    manifest.with_entry(dataset).save(manifest_path)
    build = bk.build(
        options(
            "aimo1-t4x2",
            manifest_path,
            wheels_dataset="me/wheels",
            private=False,
            docker_pinning=None,
        )
    )
    assert build.metadata["model_sources"] == []
    assert build.metadata["dataset_sources"] == ["me/wheels", "tester/numina-weights"]
    assert build.metadata["is_private"] is False
    assert "docker_image_pinning_type" not in build.metadata
    no_wheels = bk.build(options("aimo1-t4x2", manifest_path, wheels_dataset=""))
    assert no_wheels.metadata["dataset_sources"] == ["tester/numina-weights"]
    assert 'WHEELS_DATASET = ""' in no_wheels.notebook_text.replace('\\"', '"')


def test_inconsistent_metadata_is_refused(tmp_path, manifest_path, monkeypatch):
    real = bk.kernel_metadata

    def wrong_model(*args, **kw):
        meta = real(*args, **kw)
        meta["model_sources"] = ["someone/else/transformers/x/1"]
        return meta

    monkeypatch.setattr(bk, "kernel_metadata", wrong_model)
    with pytest.raises(bk.BuildError, match="do not match the manifest entry"):
        bk.build(options("aimo1-t4x2", manifest_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_model_entry_is_refused(tmp_path):
    empty = tmp_path / "m.json"
    mf.Manifest(models={}).save(empty)
    with pytest.raises(bk.BuildError, match="no model 'numinamath-7b-tir-gptq'"):
        bk.build(options("aimo1-t4x2", empty))
    with pytest.raises(bk.BuildError, match="does not exist"):
        bk.build(options("aimo1-t4x2", tmp_path / "absent.json"))


def test_repo_manifest_builds_with_warnings():
    """The repo's manifest as shipped: the build works and says what is still to fill in."""
    if not mf.DEFAULT_MANIFEST.is_file():
        pytest.skip("no weights_manifest.json yet")
    manifest = mf.load_manifest(mf.DEFAULT_MANIFEST)
    model = PRESETS["aimo1-t4x2"].model
    if model not in manifest.models:
        pytest.skip(f"weights_manifest.json has no {model} entry yet")
    entry = manifest.get(model)
    build = bk.build(bk.BuildOptions(preset="aimo1-t4x2", owner="tester"))
    sources = build.metadata["model_sources"] + build.metadata["dataset_sources"]
    assert entry.kaggle.handle in sources
    if any(f.size is None for f in entry.files):
        assert any("no size" in w for w in build.warnings)


def test_preset_file_and_overrides_go_into_the_config_cell(tmp_path, manifest_path):
    preset_file = tmp_path / "fast.json"
    preset_file.write_text(
        json.dumps({"base": "aimo3-h100", "name": "fast", "overrides": {"engine.num_rollouts": 16}})
    )
    build = bk.build(
        options(str(preset_file), manifest_path, overrides={"budget.cap_s": 300.0}),
        tmp_path / "out",
    )
    assert build.preset.name == "fast" and build.slug == "aimo-kit-fast"
    assert build.preset.engine.num_rollouts == 16 and build.preset.budget.cap_s == 300.0
    nb = nbformat.read(tmp_path / "out" / "aimo-kit-fast.ipynb", as_version=4)
    config = next(c.source for c in nb.cells if "\nPRESET = " in c.source)
    namespace: dict = {}
    exec(config, namespace)
    assert namespace["PRESET"] == "aimo3-h100"
    assert namespace["OVERRIDES"] == {
        "budget.cap_s": 300.0,
        "engine.num_rollouts": 16,
        "name": "fast",
    }
    assert nm.resolve_preset(namespace["PRESET"], namespace["OVERRIDES"]) == build.preset


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x = 1\n",
        "s = '''triple'''\n",
        'path = r"C:\\"\nend = "\\\\"',
        "ends with a quote'",
        "ends with a backslash\\",
        "windows\r\nline\r\n",
        'doc = """\\n"""\n\ttab',
    ],
)
def test_python_literal_round_trips(text):
    assert eval(bk.python_literal(text)) == text


def test_slugify_matches_kaggle_rules():
    assert bk.slugify("AIMO kit aimo1-t4x2") == "aimo-kit-aimo1-t4x2"
    assert bk.slugify("  My  Kernel: v2! ") == "my-kernel-v2"


# ------------------------------------------------------------------------------ wheels


def test_wheels_command_targets_kaggle_python(tmp_path):
    req, dest = tmp_path / "requirements.txt", tmp_path / "wheels"
    command = bk.wheels_command(req, dest, python="python3")
    assert command[:4] == ["python3", "-m", "pip", "download"]
    assert "--only-binary=:all:" in command
    pairs = list(itertools.pairwise(command))
    assert ("--python-version", "3.12") in pairs
    assert ("--implementation", "cp") in pairs
    abis = {b for a, b in pairs if a == "--abi"}
    assert abis == {"cp312", "abi3", "none"}
    platforms = [b for a, b in pairs if a == "--platform"]
    assert platforms[0] == "manylinux2014_x86_64"
    # pip only expands manylinux2014 to older tags, so newer glibc tags are listed one by one
    for tag in ("manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_35_x86_64"):
        assert tag in platforms
    assert "manylinux_2_36_x86_64" not in platforms  # newer than Kaggle's glibc
    assert ("--dest", str(dest)) in pairs and ("-r", str(req)) in pairs
    assert "--no-deps" in command  # requirements.txt is the exact set (issue 16)
    assert "--no-deps" not in bk.wheels_command(req, dest, no_deps=False)


def test_wheels_flag_runs_pip_download_and_writes_dataset_metadata(
    tmp_path, manifest_path, monkeypatch
):
    calls = []
    monkeypatch.setattr(bk.subprocess, "run", lambda cmd, check: calls.append(cmd))
    checked = []
    ok = type("Ok", (), {"ok": True, "render": lambda self: "OK"})()
    monkeypatch.setattr(bk, "check_downloaded", lambda *a: checked.append(a) or ok)
    req = tmp_path / "requirements.txt"
    req.write_text("sympy==1.14.0\n")
    wheels = tmp_path / "wheels"
    argv = ["--preset", "demo-cpu", "--out", str(tmp_path / "k"), "--owner", "tester"]
    argv += ["--requirements", str(req), "--wheels", "--wheels-dir", str(wheels)]
    assert bk.main(argv) == 0
    assert len(calls) == 1 and calls[0][3] == "download" and str(req) in calls[0]
    meta = json.loads((wheels / "dataset-metadata.json").read_text())
    assert meta["id"] == "tester/aimo-kit-wheels"
    assert meta["title"] and meta["licenses"] == [{"name": "other"}]
    assert (wheels / "requirements.txt").read_text() == req.read_text()
    assert checked == [(req, wheels)]  # the resolver check runs on what was downloaded


# ------------------------------------------------------------------------------ notebook_main


def test_wheels_found_in_both_input_layouts(tmp_path):
    classic = tmp_path / "classic"
    (classic / "aimo-kit-wheels").mkdir(parents=True)
    (classic / "aimo-kit-wheels" / "sympy-1.14.0-py3-none-any.whl").write_bytes(b"")
    assert nm.find_wheels("me/aimo-kit-wheels", [classic]) == classic / "aimo-kit-wheels"
    newer = tmp_path / "newer"
    nested = newer / "datasets" / "me" / "aimo-kit-wheels" / "wheels"
    nested.mkdir(parents=True)
    (nested / "mpmath-1.3.0-py3-none-any.whl").write_bytes(b"")
    assert nm.find_wheels("me/aimo-kit-wheels", [newer]) == nested
    assert nm.find_wheels("me/other", [classic, newer]) is None


def test_install_cell_is_skipped_off_kaggle_and_strict_on_it(tmp_path, capsys):
    req = tmp_path / "requirements.txt"
    assert nm.install_requirements("me/wheels", req, [tmp_path], mode="local") is None
    assert "skipping" in capsys.readouterr().out
    assert nm.install_requirements("", req, [tmp_path], mode="kaggle") is None
    with pytest.raises(FileNotFoundError, match="not attached"):
        nm.install_requirements("me/wheels", req, [tmp_path], mode="kaggle")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "x-1-py3-none-any.whl").write_bytes(b"")
    command = nm.install_requirements("me/wheels", req, [tmp_path], mode="kaggle", execute=False)
    assert command is not None
    assert command[1:4] == ["-m", "pip", "install"] and "--no-index" in command
    assert command[command.index("--find-links") + 1] == str(tmp_path / "wheels")
    assert command[command.index("-r") + 1] == str(req)


def test_input_roots_and_mode_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_INPUT_ROOT", raising=False)
    assert nm.input_roots() == (Path("/kaggle/input"),)
    monkeypatch.setenv("KAGGLE_INPUT_ROOT", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert nm.input_roots() == (tmp_path / "a", tmp_path / "b")
    monkeypatch.setenv("AIMO_MODE", "kaggle")
    assert nm.run_mode() == "kaggle"
    assert nm.run_mode("local") == "local"
    with pytest.raises(ValueError):
        nm.run_mode("cloud")


def test_competition_data_is_found_and_importable(tmp_path, monkeypatch):
    data = tmp_path / "competitions" / SLUGS["aimo3"]
    data.mkdir(parents=True)
    (data / "test.csv").write_text("id,problem\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert nm.competition_test_csv("aimo3", [tmp_path]) == data / "test.csv"
    assert nm.add_competition_paths("aimo3", [tmp_path]) == [data]
    assert str(data) in sys.path
    assert nm.competition_test_csv("aimo1", [tmp_path]) is None


@pytest.mark.parametrize("layout", ["models", "classic"])
def test_weights_located_through_the_manifest_and_size_checked(tmp_path, layout):
    root = tmp_path / "input"
    parts = ["tiny-llama", "transformers", "default", "1"]
    weights = (
        root.joinpath("models", "tester", *parts) if layout == "models" else root.joinpath(*parts)
    )
    weights.mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    (weights / "model.safetensors").write_bytes(b"12345")
    entry = mf.entry_from_directory(weights, "tiny", kaggle={"kind": "model", "handle": TINY})
    manifest = tmp_path / "m.json"
    mf.Manifest(models={"tiny": entry}).save(manifest)
    assert mf.find_weights("tiny", manifest, [root]).path == weights
    assert mf.find_weights("tiny", manifest, [root], check_hashes=True).path == weights
    (weights / "model.safetensors").write_bytes(b"1234")
    with pytest.raises(FileNotFoundError, match="wrong size"):
        mf.find_weights("tiny", manifest, [root])


def test_weights_are_found_after_the_sandbox_starts(tmp_path, monkeypatch):
    """Start-up order: sandbox template -> weights -> engine."""
    from kaggle_submission import kernel as kernel_module
    from kaggle_submission.backends.scripted import ScriptedBackend

    order: list[str] = []
    monkeypatch.setattr(
        kernel_module,
        "create_backend",
        lambda name, **kw: order.append("engine") or ScriptedBackend(),
    )

    def weights() -> mf.Weights:
        order.append("weights")
        return mf.Weights(tmp_path, NUMINA_PROMPT)

    preset = PRESETS["demo-cpu"].with_overrides({"model": "tiny", "backend": "scripted"})
    kernel = nm.make_kernel(preset, weights, None, None)
    real_start = kernel.sandbox.start
    monkeypatch.setattr(kernel.sandbox, "start", lambda: order.append("sandbox") or real_start())
    with kernel:
        assert order == ["sandbox", "weights", "engine"]
        assert kernel.model_path == tmp_path


# ------------------------------------------------------------------------------ executed


def _write_problems(path: Path) -> list[str]:
    rows = [
        ("p1", "What is $2 + 3$?", 5),
        ("p2", "Find the remainder when $2024$ is divided by $7$.", 1),
        ("p3", "How many primes are less than $10$?", 4),
    ]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "problem", "answer"])
        writer.writerows(rows)
    return [r[0] for r in rows]


def _execute(nb, cwd: Path, env: dict[str, str]) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    try:
        client.execute(env=env)
    except CellExecutionError as exc:  # show the notebook's own traceback
        pytest.fail(f"the built notebook failed:\n{str(exc)[-6000:]}")


def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text.append(output.get("text", "") or "".join(output.get("traceback", [])))
    return "\n".join(text)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("competition", "layout"), [("aimo1", "models"), ("aimo3", "classic")], ids=["aimo1", "aimo3"]
)
def test_built_notebook_runs_end_to_end_on_cpu(tmp_path, tiny_model_dir, competition, layout):
    """THE test: build with a tiny stand-in model attached through the manifest, execute the
    notebook with nbclient off Kaggle, and get a valid submission from the local gateway."""
    pytest.importorskip("nbclient", reason="add nbclient and ipykernel to requirements-dev.txt")
    pytest.importorskip("ipykernel", reason="add nbclient and ipykernel to requirements-dev.txt")
    pytest.importorskip("polars")

    # A fake /kaggle/input with the model mounted where Kaggle would mount it.
    inputs = tmp_path / "input"
    parts = TINY.split("/")
    mount = inputs.joinpath("models", *parts) if layout == "models" else inputs.joinpath(*parts[1:])
    shutil.copytree(tiny_model_dir, mount)
    entry = mf.entry_from_directory(
        mount, "tiny-llama", kaggle={"kind": "model", "handle": TINY}, presets=["tiny-cpu"]
    )
    manifest = tmp_path / "weights_manifest.json"
    mf.Manifest(models={"tiny-llama": entry}).save(manifest)

    overrides = {
        "name": "tiny-cpu",
        "competition": competition,
        "model": "tiny-llama",
        "backend": "transformers",
        "backend.dtype": "float32",
        "backend.device": "cpu",
        "engine.num_rollouts": 2,
        "engine.max_calls": 2,
        "engine.max_tokens_per_call": 16,
        "budget.total_s": 300,
        "budget.startup_reserve_s": 60,
        "budget.safety_s": 1,
        "budget.cap_s": 20,
    }
    build = bk.build(
        bk.BuildOptions(preset="demo-cpu", overrides=overrides, manifest=manifest, owner="tester"),
        tmp_path / "kernel",
    )
    assert build.metadata["model_sources"] == [TINY]
    assert build.metadata["competition_sources"] == [SLUGS[competition]]

    work = tmp_path / "work"
    work.mkdir()
    ids = _write_problems(tmp_path / "test.csv")
    out = work / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIMO_", "KAGGLE_"))}
    env.update(
        KAGGLE_INPUT_ROOT=str(inputs),
        AIMO_LOCAL_CSV=str(tmp_path / "test.csv"),
        AIMO_OUT_DIR=str(out),
        PYTHONPATH="",  # the notebook must run on its embedded copy, not this checkout
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    nb = nbformat.read(tmp_path / "kernel" / build.notebook_name, as_version=4)
    _execute(nb, work, env)

    log = _outputs(nb)
    assert "skipping the offline install" in log
    assert f"kit: {len(build.files)} files written to {work / 'aimo_kit'}" in log
    assert f"kit='{work / 'aimo_kit' / 'kaggle_submission'}'" in log  # the embedded copy ran
    assert f"model='{mount}'" in log
    assert "weights: tiny-llama" in log and "sizes" in log

    # A valid submission in the competition's format, one row per problem.
    if competition == "aimo1":
        rows = list(csv.DictReader((out / "submission.csv").open()))
        assert sorted(r["id"] for r in rows) == ids
        answers = [int(r["answer"]) for r in rows]
        assert all(0 <= a <= 999 for a in answers)
    else:
        import polars as pl

        frame = pl.read_parquet(out / "submission.parquet")
        assert frame.columns == ["id", "answer"]
        assert frame["answer"].dtype.is_integer()
        assert sorted(frame["id"].to_list()) == ids
        assert all(0 <= a <= 99999 for a in frame["answer"].to_list())

    # The model really ran: one trace per problem, tokens generated, no engine error.
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert sorted(t["problem_id"] for t in traces) == ids
    assert all(t["error"] is None and t["stop_reason"] != "error" for t in traces)
    tokens = sum(
        s.get("completion_tokens", 0)
        for t in traces
        for r in t["rollouts"]
        for s in r["segments"]
        if s.get("kind") == "generation"
    )
    assert tokens > 0


@pytest.mark.slow
def test_built_notebook_runs_the_openmath_demo_on_cpu(tmp_path, demo_openmath_dir):
    """The second protocol through the Kaggle path: the openmath-tir DEMO model attached with a
    manifest entry whose prompt.format is openmath-tir, the notebook built from the
    demo-cpu-openmath preset and run on its embedded kit; the model's `<tool_call>` code runs
    and its boxed copies of the output answer the held-out problems."""
    pytest.importorskip("nbclient", reason="add nbclient and ipykernel to requirements-dev.txt")
    pytest.importorskip("ipykernel", reason="add nbclient and ipykernel to requirements-dev.txt")
    from kaggle_submission.offline.demo import demo_problems

    handle = "tester/demo-openmath/transformers/default/1"
    inputs = tmp_path / "input"
    mount = inputs.joinpath("models", *handle.split("/"))
    shutil.copytree(demo_openmath_dir, mount)
    entry = mf.entry_from_directory(
        mount,
        "demo-openmath-test",
        kaggle={"kind": "model", "handle": handle},
        prompt={"format": "openmath-tir"},
        presets=["demo-cpu-openmath"],
    )
    manifest = tmp_path / "weights_manifest.json"
    mf.Manifest(models={entry.name: entry}).save(manifest)
    overrides = {
        "model": entry.name,
        "backend": "transformers",
        "backend.device": "cpu",
        "engine.num_rollouts": 2,
        "budget.total_s": 300,
        "budget.startup_reserve_s": 60,
        "budget.safety_s": 1,
    }
    build = bk.build(
        bk.BuildOptions(
            preset="demo-cpu-openmath", overrides=overrides, manifest=manifest, owner="tester"
        ),
        tmp_path / "kernel",
    )
    assert build.metadata["model_sources"] == [handle]

    problems = demo_problems(3, seed=5)
    with (tmp_path / "test.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "problem", "answer"])
        writer.writerows((p.id, p.problem, p.answer) for p in problems)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIMO_", "KAGGLE_"))}
    env.update(
        KAGGLE_INPUT_ROOT=str(inputs),
        AIMO_LOCAL_CSV=str(tmp_path / "test.csv"),
        AIMO_OUT_DIR=str(out),
        PYTHONPATH="",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    nb = nbformat.read(tmp_path / "kernel" / build.notebook_name, as_version=4)
    _execute(nb, work, env)
    log = _outputs(nb)
    assert f"kit='{work / 'aimo_kit' / 'kaggle_submission'}'" in log
    assert "weights: demo-openmath-test" in log

    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert sorted(t["problem_id"] for t in traces) == sorted(p.key for p in problems)
    assert all(t["error"] is None for t in traces)
    segments = [s for t in traces for r in t["rollouts"] for s in r["segments"]]
    executions = [s for s in segments if s.get("kind") == "execution"]
    assert executions and all("t=" in s["output"] for s in executions)  # <tool_call> code ran
    generated = "".join(s.get("text", "") for s in segments if s.get("kind") == "generation")
    assert "<tool_call>" in generated and "</tool_call>" in generated
    rows = list(csv.DictReader((out / "submission.csv").open()))
    assert sorted(r["id"] for r in rows) == sorted(p.id for p in problems)


@pytest.mark.slow
def test_dry_run_notebook(tmp_path, tiny_model_dir):
    """notebooks/dry_run.ipynb runs the dry run (tiny model, two problems)."""
    pytest.importorskip("nbclient", reason="add nbclient and ipykernel to requirements-dev.txt")
    pytest.importorskip("ipykernel", reason="add nbclient and ipykernel to requirements-dev.txt")
    nb = nbformat.read(REPO / "notebooks" / "dry_run.ipynb", as_version=4)
    nbformat.validate(nb)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    _write_problems(tmp_path / "problems.csv")
    injected = {
        "DATA": str(tmp_path / "problems.csv"),
        "LIMIT": 2,
        "MODEL": str(tiny_model_dir),
        "BACKEND": "transformers",
        "OVERRIDES": {
            "engine.num_rollouts": 2,
            "engine.max_calls": 1,
            "engine.max_tokens_per_call": 8,
            "backend.device": "cpu",
        },
        "OUT": str(tmp_path / "out"),
    }
    source = "\n".join(f"{k} = {v!r}" for k, v in injected.items())
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(source, id="injected-parameters"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    _execute(nb, REPO / "notebooks", env)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["scored"] == 2
    assert (tmp_path / "out" / "report.md").is_file()
    assert "accuracy" in _outputs(nb)
