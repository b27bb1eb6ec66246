"""The training side of the AIMO submission kit (see training/README.md).

Stages, each a command with a YAML config (every value overridable with ``--set key=value``):
``training.data`` (load, decontaminate, split), ``training.sft`` (stage 1 CoT, stage 2 TIR),
``training.kto`` (optional), ``training.quantize`` (GPTQ 8-bit), ``training.publish`` (manifest
entry + Kaggle metadata), ``training.demo`` (the tiny DEMO model).

From the kernel package it imports only ``prompts``, ``answers``, ``manifest`` and ``demo`` (the
demo task's definition), plus the engine, sandbox and backends for sampling (KTO, demo
evaluation). Heavy libraries (torch, transformers, trl, datasets, gptqmodel) are imported inside
the functions that need them.
"""
