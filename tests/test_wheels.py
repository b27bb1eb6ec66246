"""The offline wheel set: the image record, the resolver check, the notebook's install cell.

Nothing here downloads: the check runs pip's resolver on metadata-only wheels built from the
committed `data/wheel_metadata.json`; the install cell installs tiny wheels built in the test
into a bare venv (pip's `--python`), never into the test environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from kaggle_submission import notebook_main as nm
from kaggle_submission import wheelset as ws

REPO = Path(__file__).resolve().parent.parent


def make_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A real (tiny) installable wheel with one module."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    files = {
        f"{dist}.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": "\n".join(meta) + "\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


# ------------------------------------------------------------------------------ the record


def test_image_record_names_its_sources_and_kaggle_facts():
    data = json.loads(ws.IMAGE_RECORD.read_text())
    image = ws.load_image()
    assert image.python.startswith("3.12.")
    assert image.torch == "2.10.0+cu128" and data["cuda"] == "12.8"
    assert image.packages["numpy"] == "2.0.2"
    for key in ("kaggle_dockerfile", "base_freeze"):
        source = data["source"][key]
        assert len(source["commit"]) == 40 and source["date"] and source["files"]
    assert "20260514" in data["source"]["base_image"]
    assert "transformers" in image.unknown  # Kaggle's layer asks >=5.0.0: exact version unknown
    assert image.packages["protobuf"] == "5.29.5"  # the Dockerfile's force-reinstall


def test_requirements_are_exact_pins_without_torch():
    pins = ws.parse_requirements(ws.REQUIREMENTS.read_text())
    keys = {p.key for p in pins}
    assert [p.name for p in pins if p.root] == ["vllm"]
    assert next(p.version for p in pins if p.key == "vllm") == "0.19.1"
    assert not keys & {"torch", "torchvision", "torchaudio", "triton", "numpy", "sympy"}
    with pytest.raises(ws.WheelSetError, match="not `name==version`"):
        ws.parse_requirements("vllm>=0.19\n")


def test_markers_are_evaluated_for_kaggles_python_not_this_one():
    requires = ws.effective_requires(
        [
            'six>=1.16; python_version > "3.11"',
            'old; python_version < "3.12"',
            'zen; extra == "zen"',
            'win; sys_platform == "win32"',
        ]
    )
    assert requires == {"": ["six>=1.16"], "zen": ["zen"]}


# ------------------------------------------------------------------------------ the check


@pytest.fixture(scope="module")
def committed():
    pins = ws.parse_requirements(ws.REQUIREMENTS.read_text())
    metadata = ws.load_metadata()
    return pins, metadata["wheels"], ws.load_image(), metadata["image"]


@pytest.mark.slow
def test_committed_set_resolves_against_the_image(committed):
    pins, wheels, image, image_meta = committed
    result = ws.check(pins, wheels, image, image_meta)
    assert result.ok, result.render()
    changed = {c.name: (c.image, c.version) for c in result.changes if c.kind == "change"}
    # vLLM's own pins and nothing beyond them; torch and the CUDA stack stay the image's
    assert set(changed) == {"lark", "llvmlite", "numba", "protobuf", "setuptools", "transformers"}
    assert {c.name for c in result.changes} == {p.key for p in pins}
    kept = dict(result.kept)
    assert kept["torch"] == "2.10.0+cu128" and kept["numpy"] == "2.0.2"
    assert len(wheels) == len(pins) and result.wheel_bytes < 1.5e9


@pytest.mark.slow
def test_check_fails_when_a_changed_image_package_is_left_out(committed):
    pins, wheels, image, image_meta = committed
    pins = [p for p in pins if p.key != "numba"]
    wheels = [w for w in wheels if w.key != "numba"]
    result = ws.check(pins, wheels, image, image_meta)
    assert not result.ok
    assert "numba" in result.errors[0] and "0.60.0" in result.errors[0]


def test_check_refuses_torch_and_stray_or_missing_wheels(committed):
    pins, wheels, image, _ = committed
    torch = ws.Pin("torch", "2.9.0")
    result = ws.check([*pins, torch], [*wheels, ws.image_wheel("torch", "2.9.0")], image)
    assert any("torch must stay the image's" in e for e in result.errors)
    result = ws.check(pins[1:], wheels, image)
    assert any("stray wheel" in e for e in result.errors)
    result = ws.check(pins, wheels[1:], image)
    assert any("no wheel" in e for e in result.errors)


@pytest.mark.slow
def test_check_flags_a_pin_no_root_needs(committed):
    pins, wheels, image, image_meta = committed
    extra = ws.WheelMeta("aimo_unneeded-1.0-py3-none-any.whl", "aimo-unneeded", "1.0")
    result = ws.check([*pins, ws.Pin("aimo-unneeded", "1.0")], [*wheels, extra], image, image_meta)
    assert result.errors == ("aimo-unneeded==1.0 is not needed by any root",)


def test_check_reads_a_downloaded_wheel_directory(tmp_path):
    """The same check on real wheel files (what a user runs on dist/wheels)."""
    (tmp_path / "wheels").mkdir()
    make_wheel(tmp_path / "wheels", "aimo-app", "1.0", ("aimo-lib>=2", "numpy"))
    make_wheel(tmp_path / "wheels", "aimo-lib", "2.0")
    image = {"python": "3.12.13", "packages": {"aimo-lib": "1.0", "numpy": "2.0.2"}}
    (tmp_path / "image.json").write_text(json.dumps(image))
    (tmp_path / "meta.json").write_text(json.dumps({"wheels": [], "image": []}))
    req = tmp_path / "req.txt"
    req.write_text("aimo-app==1.0  # root\naimo-lib==2.0  # image 1.0\n")
    result = ws.check_files(
        req, tmp_path / "wheels", tmp_path / "image.json", tmp_path / "meta.json"
    )
    assert result.ok, result.render()
    assert {(c.name, c.image, c.version) for c in result.changes} == {
        ("aimo-app", None, "1.0"),
        ("aimo-lib", "1.0", "2.0"),
    }
    req.write_text("aimo-app==1.0  # root\n")  # the changed dependency forgotten
    (tmp_path / "wheels" / "aimo_lib-2.0-py3-none-any.whl").unlink()
    result = ws.check_files(
        req, tmp_path / "wheels", tmp_path / "image.json", tmp_path / "meta.json"
    )
    assert not result.ok and "aimo-lib" in result.errors[0]


def test_cli_check_exit_status(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    make_wheel(tmp_path / "w", "aimo-app", "1.0", ("torch==9.0",))
    (tmp_path / "image.json").write_text(
        json.dumps({"python": "3.12", "packages": {"torch": "2.10.0"}})
    )
    (tmp_path / "meta.json").write_text(json.dumps({"wheels": [], "image": []}))
    (tmp_path / "r.txt").write_text("aimo-app==1.0  # root\n")
    args = ["check", "--requirements", str(tmp_path / "r.txt"), "--wheels", str(tmp_path / "w")]
    args += ["--image", str(tmp_path / "image.json"), "--metadata", str(tmp_path / "meta.json")]
    assert ws.main(args) == 1
    out = capsys.readouterr().out
    assert "torch" in out and "FAILED" in out


# ------------------------------------------------------------------------------ the install cell


@pytest.fixture
def image_env(tmp_path):
    """A bare venv standing for Kaggle's image: aimo-lib 1.0 and a fake torch installed."""
    env = tmp_path / "image"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    base = tmp_path / "base"
    base.mkdir()
    make_wheel(base, "aimo-lib", "1.0")
    make_wheel(base, "torch", "2.10.0")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "--isolated",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            *map(str, sorted(base.glob("*.whl"))),
        ],
        check=True,
        env=ws.clean_pip_env(),
    )
    root = tmp_path / "input"
    wheels = root / "datasets" / "me" / "wheels"
    wheels.mkdir(parents=True)
    return python, root, wheels


def _install(python, root, requirements):
    return nm.install_requirements("me/wheels", requirements, [root], mode="kaggle", python=python)


@pytest.mark.slow
def test_install_cell_dry_runs_then_installs_exactly_the_pins(image_env, tmp_path, capsys):
    python, root, wheels = image_env
    make_wheel(wheels, "aimo-app", "1.0", ("aimo-lib>=2", "torch==2.10.0"))
    make_wheel(wheels, "aimo-lib", "2.0")
    req = tmp_path / "requirements.txt"
    req.write_text("aimo-app==1.0  # root\naimo-lib==2.0\n")
    command = _install(python, root, req)
    assert "--no-deps" in command and "--no-index" in command
    out = capsys.readouterr().out
    assert "aimo-lib 1.0 -> 2.0" in out and "aimo-app (new) -> 1.0" in out
    assert "installed 2 wheels" in out and "torch stays 2.10.0" in out
    after = ws.installed_versions(str(python))
    assert after["aimo-app"] == "1.0" and after["aimo-lib"] == "2.0" and after["torch"] == "2.10.0"


@pytest.mark.slow
def test_install_cell_fails_before_installing_an_incomplete_set(image_env, tmp_path):
    python, root, wheels = image_env
    make_wheel(wheels, "aimo-app", "1.0", ("aimo-lib>=2",))
    req = tmp_path / "requirements.txt"
    req.write_text("aimo-app==1.0  # root\n")
    with pytest.raises(ws.WheelSetError, match="nothing was installed"):
        _install(python, root, req)  # aimo-lib 2 has no wheel: pip cannot resolve
    make_wheel(wheels, "aimo-lib", "2.0")
    with pytest.raises(ws.WheelSetError, match=r"aimo-lib 2\.0 would be installed but is not"):
        _install(python, root, req)  # the wheel is there but --no-deps would skip it
    assert "aimo-app" not in ws.installed_versions(str(python))


@pytest.mark.slow
def test_install_cell_refuses_to_replace_torch(image_env, tmp_path):
    python, root, wheels = image_env
    make_wheel(wheels, "torch", "2.9.0")
    req = tmp_path / "requirements.txt"
    req.write_text("torch==2.9.0  # root\n")
    with pytest.raises(ws.WheelSetError, match=r"torch would change from the image's 2\.10\.0"):
        _install(python, root, req)
    assert ws.installed_versions(str(python))["torch"] == "2.10.0"
