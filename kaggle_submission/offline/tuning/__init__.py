"""The budget tuner's parts; `kaggle_submission.offline.tune` is the entry point.

- recorded: traces -> padded arrays of rollout chains (the population resampled)
- throughput: tokens/s against concurrency (measured table, fit, or roofline assumption)
- simulate: candidates replayed under the engine's rules, early stop, vote and budget
- outputs: table, Pareto plot, preset file
"""
