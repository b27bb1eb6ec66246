"""The training side of the AIMO submission kit (see training/README.md).

Stages, each a command with a YAML config (every value overridable with ``--set key=value``):
``training.data`` (load, decontaminate, split), ``training.sft`` (stage 1 CoT, stage 2 TIR),
``training.kto`` (optional), ``training.quantize`` (GPTQ 8-bit), ``training.publish`` (manifest
entry + Kaggle metadata), ``training.demo`` (the tiny DEMO model).

From the kit it imports only ``prompts``, ``answers``, ``manifest``, ``offline.demo`` (the demo
task's definition and model cache) and ``offline.report``, plus the engine, sandbox and backends
for sampling (KTO, demo evaluation). The kit never imports ``training``: it builds the demo model
by running ``python -m training.demo``. Heavy libraries (torch, transformers, trl, datasets,
gptqmodel) are imported inside the functions that need them.
"""
