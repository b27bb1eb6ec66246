# The Kaggle kernel template that build_kernel.py fills (jupytext "percent" format).
#
# Each "# %%" line starts a cell ("# %% [markdown]": a markdown cell written as "# " comments;
# "# %% kit-files": replaced by one cell per embedded file). __NAME__ placeholders are filled by
# the build. Everything above the first cell marker, this header included, stays out of the
# notebook. The file is valid Python so that ruff checks what the cells say.
# ruff: noqa: E402

# %% [markdown]
# # __TITLE__
#
# An offline submission kernel for the AI Mathematical Olympiad, built by `build_kernel.py` from
# the AIMO submission kit: SC-TIR (N sampled solutions write Python, a sandbox runs it and feeds
# the output back, the boxed answers are voted on) within the competition's time limit.
#
# | | |
# |---|---|
# | preset | `__PRESET_NAME__`: __DESCRIPTION__ |
# | competition | __COMPETITION__ |
# | model | __MODEL__ |
# | hardware | __HARDWARE__ |
# | kit | __KIT__ |
#
# Cells: (1) the kit's source, written to disk; (2) the offline install from the attached wheels
# dataset; (3) the config, to edit here; (4) the run. Off Kaggle (no `/kaggle/input`) the run
# serves the kit's own local gateway on the CSV named by `$AIMO_LOCAL_CSV` and writes the
# submission file beside the notebook.

# %% [markdown]
# ## 1. The kit's source
#
# One cell per file of the `kaggle_submission` package, then the weights manifest (the model
# entry the run checks the attached weights against) and the requirements. The last cell of this
# section writes them under `KIT_DIR`. Nothing heavy is imported before the run cell: the sandbox
# must start before any CUDA context exists.

# %%
import os
import sys
import time
from pathlib import Path

NOTEBOOK_STARTED = time.time()  # the run's clock: the budget counts install and start-up too
KIT_DIR = Path(os.environ.get("AIMO_KIT_DIR", "aimo_kit")).resolve()
KIT_FILES: dict[str, str] = {}

# %% kit-files

# %%
import importlib
import shutil


def write_kit(files: dict[str, str], root: Path) -> None:
    """Write a fresh copy of the kit under `root`; importable here and in child processes."""
    shutil.rmtree(root / "kaggle_submission", ignore_errors=True)
    for relative, text in sorted(files.items()):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    paths = [str(root), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    for name in [m for m in sys.modules if m.split(".")[0] == "kaggle_submission"]:
        del sys.modules[name]  # a re-run imports the copy just written
    importlib.invalidate_caches()


write_kit(KIT_FILES, KIT_DIR)
print(f"kit: {len(KIT_FILES)} files written to {KIT_DIR}")

# %% [markdown]
# ## 2. Offline install
#
# The notebook has no internet: a `pip install --dry-run` of requirements.txt against this image
# from the wheels dataset attached as an input (found under `/kaggle/input` in either mount
# layout) must resolve without touching torch, then exactly those wheels are installed with
# `--no-index --no-deps` and listed. Skipped, with a message, when not on Kaggle.

# %%
from kaggle_submission import notebook_main

WHEELS_DATASET = "__WHEELS_DATASET__"  # owner/slug of the attached wheels dataset; "" skips
notebook_main.install_requirements(WHEELS_DATASET, KIT_DIR / "requirements.txt")

# %% [markdown]
# ## 3. Config
#
# The preset (see `python -m kaggle_submission presets`) and dotted overrides as JSON, e.g.
# `"engine.num_rollouts": 32`, `"budget.total_s": 30000`, `"backend.gpu_memory_utilization": 0.9`.

# %%
import json

PRESET = "__PRESET__"
OVERRIDES = json.loads(
    r"""
__OVERRIDES_JSON__
"""
)

# %% [markdown]
# ## 4. Run
#
# The competition's API starts serving at once (AIMO-1's `aimo` env, or AIMO-2/3's
# kaggle_evaluation server, which serves on the competition rerun: its gateway allows 15 minutes
# for that) while a background thread builds the kernel: sandbox first (before CUDA), then the
# weights (located through the manifest and size-checked), then the engine. Each problem waits
# for the build; if it fails, every problem gets the fallback answer and the log says why. The
# result reports the seconds from this cell's start to "serving" and to "engine ready".

# %%
if __name__ == "__main__":
    RESULT = notebook_main.main(preset=PRESET, overrides=OVERRIDES, started_at=NOTEBOOK_STARTED)
    print(RESULT)
