"""Offline tools beside the Kaggle path, never imported by it and never embedded in the notebook:
the CLI, dry runs (sequential and sharded), the report, budget tuning, the capacity estimate and
the demo model's problems. They may import the Kaggle path; the Kaggle path imports none of them
(tests/test_layers.py checks it).
"""
