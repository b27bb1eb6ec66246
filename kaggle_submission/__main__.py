"""`python -m kaggle_submission ...`: the offline CLI (`offline/cli.py`)."""

from kaggle_submission.offline.cli import main

if __name__ == "__main__":  # vLLM spawns workers that re-import the main module
    raise SystemExit(main())
