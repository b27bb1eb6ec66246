"""The demo model is the offline CLI's business: built at the edge, handed to the kernel as a
directory. These tests use a fake repository whose `training/demo.py` writes a finished model at
once, so the build path (subprocess, lock, rename, errors) runs for real without training."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from kaggle_submission.kernel import resolve_model
from kaggle_submission.offline import demo
from kaggle_submission.presets import PRESETS

REPO = Path(__file__).resolve().parent.parent

FAKE_TRAINING_DEMO = textwrap.dedent(
    """
    import argparse, json, os, sys
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--manifest", required=True)
    args = parser.parse_args()
    with open(os.environ["FAKE_BUILD_LOG"], "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "argv": sys.argv[1:]}) + "\\n")
    print("fake training running")
    if os.environ.get("FAKE_BUILD_FAIL"):
        print("training exploded")
        sys.exit(3)
    out = Path(args.out)
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "demo_model.json").write_text(json.dumps({"version": os.environ["FAKE_VERSION"]}))
    Path(args.manifest).write_text("{}")
    """
)


@pytest.fixture
def fake_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = tmp_path / "repo"
    (repo / "training").mkdir(parents=True)
    (repo / "training" / "__init__.py").write_text("")
    (repo / "training" / "demo.py").write_text(FAKE_TRAINING_DEMO)
    monkeypatch.setenv("FAKE_BUILD_LOG", str(tmp_path / "builds.jsonl"))
    monkeypatch.setenv("FAKE_VERSION", demo.DEMO_VERSION)
    return repo


def builds(repo: Path) -> list[dict]:
    log = repo.parent / "builds.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_edge_builds_the_demo_model_by_running_training_in_a_subprocess(
    fake_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    path = demo.ensure_demo_model(cache, repo=fake_repo)
    assert path == demo.demo_model_dir(cache)
    assert json.loads((path / demo.READY_FILE).read_text())["version"] == demo.DEMO_VERSION
    assert (cache / "weights_manifest.json").is_file()
    [run] = builds(fake_repo)
    assert run["pid"] != os.getpid() and Path(run["cwd"]) == fake_repo
    assert run["argv"][0] == "--out" and run["argv"][2:] == [
        "--manifest",
        str(cache / "weights_manifest.json"),
    ]
    assert Path(run["argv"][1]).parent == cache and Path(run["argv"][1]) != path  # renamed in
    assert "fake training running" in capsys.readouterr().err  # its output is relayed
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [path.name, f"{path.name}.lock", "weights_manifest.json"]
    )
    # cached: the second call builds nothing
    assert demo.ensure_demo_model(cache, repo=fake_repo) == path
    assert len(builds(fake_repo)) == 1


def test_a_failed_build_says_why_and_leaves_nothing_half_built(
    fake_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BUILD_FAIL", "1")
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="exited with 3") as info:
        demo.ensure_demo_model(cache, repo=fake_repo)
    assert "training exploded" in str(info.value)
    assert not demo.demo_model_dir(cache).exists()
    assert [p.name for p in cache.iterdir() if "building" in p.name] == []


def test_without_training_next_to_the_package_it_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"python -m training\.demo --out"):
        demo.ensure_demo_model(tmp_path / "cache", repo=tmp_path / "installed-elsewhere")


def test_this_checkout_is_the_repository_that_builds_it() -> None:
    assert demo.repository_root() == REPO


def test_model_dir_for_builds_only_for_the_demo_preset_without_a_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(demo, "ensure_demo_model", lambda: tmp_path / "built")
    assert demo.model_dir_for(demo.DEMO_ENTRY_NAME, None) == tmp_path / "built"
    assert demo.model_dir_for(demo.DEMO_ENTRY_NAME, "/my/model") == "/my/model"
    assert demo.model_dir_for("numinamath-7b-tir-gptq", None) is None
    assert demo.model_dir_for("numinamath-7b-tir-gptq", "/w") == "/w"


def test_the_kernel_has_no_demo_special_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a finished demo model in the cache the kernel still does not pick it up by itself:
    the demo preset's weights come as a directory (or through the manifest like any model)."""
    cache = tmp_path / "cache"
    built = demo.demo_model_dir(cache)
    built.mkdir(parents=True)
    (built / "config.json").write_text("{}")
    (built / demo.READY_FILE).write_text(json.dumps({"version": demo.DEMO_VERSION}))
    monkeypatch.setenv("KAGGLE_SUBMISSION_CACHE", str(cache))
    preset = PRESETS["demo-cpu"]
    assert preset.model == demo.DEMO_ENTRY_NAME
    with pytest.raises(FileNotFoundError):
        resolve_model(preset)
    found = resolve_model(preset, demo.model_dir_for(preset.model, None))
    assert getattr(found, "path", found) == built


def test_the_dry_run_hands_the_kernel_the_cached_demo_directory(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from kaggle_submission.offline.dryrun import DEMO_BANNER, DryRunOptions, dry_run

    cache = tmp_path / "cache"
    built = demo.demo_model_dir(cache)
    shutil.copytree(tiny_model_dir, built)  # stands in for the trained demo model
    (built / demo.READY_FILE).write_text(json.dumps({"version": demo.DEMO_VERSION}))
    monkeypatch.setenv("KAGGLE_SUBMISSION_CACHE", str(cache))
    stream = io.StringIO()
    summary = dry_run(
        DryRunOptions(
            out_dir=tmp_path / "run",
            limit=1,
            backend="transformers",
            overrides={
                "engine.num_rollouts": 1,
                "engine.max_calls": 1,
                "engine.max_tokens_per_call": 4,
            },
            ablate_code=False,
        ),
        stream=stream,
    )
    assert summary["model"] == str(built) and summary["banner"] == DEMO_BANNER
    assert f"model: {built}" in stream.getvalue()
