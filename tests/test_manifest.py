"""The weights manifest: schema validation, directory checks, fill, save, locate on Kaggle."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from kaggle_submission import manifest as mf


def good_entry(name: str = "m", kind: str = "model") -> dict:
    handle = "me/my-model/transformers/8bit/3" if kind == "model" else "me/my-weights"
    return {
        "name": name,
        "description": "a model",
        "source": {"hf_repo": "org/repo", "revision": None},
        "kaggle": {"kind": kind, "handle": handle},
        "quantization": {
            "method": "gptq",
            "bits": 8,
            "group_size": 128,
            "desc_act": True,
            "sym": True,
            "library": "gptqmodel",
            "library_version": "7.6.0",
        },
        "files": [{"path": "config.json", "size": 2}, {"path": "sub/w.safetensors"}],
        "prompt": {"format": "numina"},
        "presets": ["aimo1-t4x2"],
        "demo": False,
    }


def good(**entries: dict) -> dict:
    return {"schema_version": 1, "models": entries or {"m": good_entry()}}


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def make_model_dir(base: Path) -> Path:
    (base / "sub").mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text("{}")
    (base / "sub" / "w.safetensors").write_bytes(b"weights" * 10)
    return base


def test_good_manifest_loads(tmp_path: Path) -> None:
    m = mf.load_manifest(write(tmp_path / "w.json", good()))
    e = m.get("m")
    assert e.kaggle.parts == ("me", "my-model", "transformers", "8bit", "3")
    assert e.quantization is not None and e.quantization.desc_act is True
    assert e.file("config.json").size == 2 and e.file("sub/w.safetensors").sha256 is None
    assert not e.complete


def test_shipped_manifest_is_valid() -> None:
    m = mf.load_manifest(mf.DEFAULT_MANIFEST)
    target = m.get("numinamath-7b-tir-gptq")
    assert target.source.hf_repo == "AI-MO/NuminaMath-7B-TIR-GPTQ"
    q = target.quantization
    assert q is not None and (q.method, q.bits, q.group_size, q.desc_act) == ("gptq", 8, 128, True)
    assert "config.json" in {f.path for f in target.files}
    assert target.presets == ("aimo1-t4x2",)
    assert mf.DEFAULT_MANIFEST.read_text() == m.dumps()  # saved by Manifest.save


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda e: e.pop("kaggle"), "kaggle", "missing"),
        (lambda e: e.pop("files"), "files", "missing"),
        (lambda e: e["files"][0].pop("path"), "files[0].path", "missing"),
        (lambda e: e.update(demo="yes"), "demo", "true or false"),
        (lambda e: e["quantization"].update(bits="8"), "quantization.bits", "integer"),
        (lambda e: e["quantization"].update(bits=5), "quantization.bits", "2, 3, 4 or 8"),
        (lambda e: e["quantization"].update(method="awq"), "quantization.method", "one of"),
        (lambda e: e["files"][1].update(size=-1), "files[1].size", ">= 0"),
        (lambda e: e["files"][1].update(size=1.5), "files[1].size", "integer"),
        (lambda e: e["files"][1].update(sha256="ABC"), "files[1].sha256", "64 lowercase hex"),
        (lambda e: e["files"][1].update(path="../x"), "files[1].path", "relative POSIX"),
        (lambda e: e["files"].append({"path": "config.json"}), "files[2].path", "twice"),
        (lambda e: e["kaggle"].update(handle="me/model"), "kaggle.handle", "framework"),
        (lambda e: e["kaggle"].update(handle="me/m/t/v/latest"), "kaggle.handle", "number"),
        (lambda e: e["kaggle"].update(kind="notebook"), "kaggle.kind", "one of"),
        (lambda e: e["prompt"].update(format="chatml"), "prompt.format", "one of"),
        (lambda e: e.update(presets="aimo1-t4x2"), "presets", "list"),
        (lambda e: e.update(name="other"), "name", "differs from its key"),
        (lambda e: e.update(extra=1), "extra", "unknown field"),
    ],
)
def test_broken_entries_name_model_and_field(
    tmp_path: Path, mutate, field: str, words: str
) -> None:
    entry = copy.deepcopy(good_entry("numina"))
    mutate(entry)
    path = write(tmp_path / "w.json", good(numina=entry))
    with pytest.raises(mf.ManifestError) as info:
        mf.load_manifest(path)
    message = str(info.value)
    assert "model 'numina'" in message
    assert f"field '{field}'" in message
    assert words in message
    assert str(path) in message


def test_broken_top_level(tmp_path: Path) -> None:
    with pytest.raises(mf.ManifestError, match="schema_version"):
        mf.load_manifest(write(tmp_path / "a.json", {"schema_version": 2, "models": {}}))
    with pytest.raises(mf.ManifestError, match="'models': expected an object"):
        mf.load_manifest(write(tmp_path / "b.json", {"schema_version": 1, "models": []}))
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(mf.ManifestError, match="not valid JSON"):
        mf.load_manifest(tmp_path / "c.json")
    with pytest.raises(mf.ManifestError, match="cannot read"):
        mf.load_manifest(tmp_path / "absent.json")
    m = mf.load_manifest(write(tmp_path / "d.json", good()))
    with pytest.raises(mf.ManifestError, match=r"no model 'x'.*known: m"):
        m.get("x")


def test_save_is_byte_reproducible(tmp_path: Path) -> None:
    entries = {"b": good_entry("b"), "a": good_entry("a", kind="dataset")}
    m = mf.load_manifest(write(tmp_path / "in.json", good(**entries)))
    m.save(tmp_path / "one.json")
    again = mf.load_manifest(tmp_path / "one.json")
    again.save(tmp_path / "two.json")
    one, two = (tmp_path / "one.json").read_bytes(), (tmp_path / "two.json").read_bytes()
    assert one == two and one.endswith(b"\n")
    assert list(json.loads(one)["models"]) == ["a", "b"]  # stable order
    assert list(json.loads(one)["models"]["a"]) == list(mf._ENTRY_FIELDS)


def test_entry_from_directory_and_verify(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "model")
    (d / "model-metadata.json").write_text("{}")  # upload metadata is not a weight file
    entry = mf.entry_from_directory(
        d, "x", kaggle={"kind": "dataset", "handle": "me/x"}, presets=["demo-cpu"], demo=True
    )
    assert [f.path for f in entry.files] == ["config.json", "sub/w.safetensors"]
    w = entry.file("sub/w.safetensors")
    assert w.size == 70 and w.sha256 == hashlib.sha256(b"weights" * 10).hexdigest()
    assert entry.complete and entry.demo
    assert mf.verify_directory(entry, d, check_hashes=True) == []

    (d / "sub" / "w.safetensors").write_bytes(b"weightz" * 10)  # same size, other bytes
    assert mf.verify_directory(entry, d, check_hashes=False) == []
    problems = mf.verify_directory(entry, d, check_hashes=True)
    assert len(problems) == 1 and "wrong sha256 for sub/w.safetensors" in problems[0]

    (d / "sub" / "w.safetensors").write_bytes(b"short")
    assert mf.verify_directory(entry, d) == [
        "wrong size for sub/w.safetensors: 5 bytes, expected 70"
    ]
    (d / "config.json").unlink()
    assert "missing file config.json" in mf.verify_directory(entry, d)
    assert mf.verify_directory(entry, tmp_path / "nowhere") == [
        f"{tmp_path / 'nowhere'} is not a directory"
    ]


def test_fill_adds_hashes_and_rejects_wrong_sizes(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "model")
    path = write(tmp_path / "w.json", good())
    filled = mf.fill(mf.load_manifest(path), "m", d)
    e = filled.get("m")
    assert e.complete and e.file("sub/w.safetensors").size == 70
    filled.save(path)
    assert mf.load_manifest(path).get("m").complete

    data = good()
    data["models"]["m"]["files"][0]["size"] = 3
    with pytest.raises(mf.ManifestError, match=r"file 'config.json' is 2 bytes .* says 3"):
        mf.fill(mf.parse_manifest(data), "m", d)
    (d / "sub" / "w.safetensors").unlink()
    with pytest.raises(mf.ManifestError, match=r"file 'sub/w\.safetensors' is missing"):
        mf.fill(mf.parse_manifest(good()), "m", d)


def test_fill_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_model_dir(tmp_path / "model")
    path = write(tmp_path / "w.json", good())
    assert mf.main(["--manifest", str(path), "fill", str(d)]) == 0
    assert mf.load_manifest(path).get("m").complete
    assert mf.main(["--manifest", str(path), "verify", str(d)]) == 0
    (d / "config.json").write_text("{ }")
    assert mf.main(["--manifest", str(path), "verify", str(d)]) == 1
    assert "wrong size for config.json" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["models", "classic", "nested"])
def test_locate_model_layouts(tmp_path: Path, layout: str) -> None:
    entry = mf.parse_manifest(good()).get("m")
    root = tmp_path / "input"
    if layout == "models":
        where = root / "models/me/my-model/transformers/8bit/3"
    elif layout == "classic":
        where = root / "my-model/transformers/8bit/3"
    else:  # the uploaded folder itself is one level down
        where = root / "models/me/my-model/transformers/8bit/3/numina"
    make_model_dir(where)
    assert mf.locate(entry, roots=(root,)) == where


@pytest.mark.parametrize("layout", ["datasets", "classic"])
def test_locate_dataset_layouts(tmp_path: Path, layout: str) -> None:
    entry = mf.parse_manifest(good(m=good_entry(kind="dataset"))).get("m")
    root = tmp_path / "input"
    where = root / "datasets/me/my-weights" if layout == "datasets" else root / "my-weights"
    make_model_dir(where)
    assert mf.locate(entry, roots=(root,)) == where


def test_locate_override_and_clear_error(tmp_path: Path) -> None:
    entry = mf.parse_manifest(good()).get("m")
    custom = make_model_dir(tmp_path / "custom")
    assert mf.locate(entry, roots=(tmp_path / "input",), override=custom) == custom

    root = tmp_path / "input"
    partial = root / "my-model/transformers/8bit/3"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    with pytest.raises(mf.ModelNotFoundError) as info:
        mf.locate(entry, roots=(root,))
    message = str(info.value)
    assert "model 'm'" in message and "me/my-model/transformers/8bit/3" in message
    assert f"{root / 'models/me/my-model/transformers/8bit/3'} (absent)" in message
    assert f"{partial} (present, lacks sub/w.safetensors)" in message


def test_with_entry_validates() -> None:
    m = mf.parse_manifest(good())
    bad = mf.ModelEntry(
        name="z",
        description="",
        source=mf.SourceRef(),
        kaggle=mf.KaggleRef("dataset", "not a handle"),
        quantization=None,
        files=(mf.FileEntry("a"),),
    )
    with pytest.raises(mf.ManifestError, match=r"model 'z': field 'kaggle\.handle'"):
        m.with_entry(bad)
