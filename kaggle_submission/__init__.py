"""AIMO submission kit: the offline SC-TIR inference kernel.

The pure parts (answers, prompts, config, traces, budget) import in milliseconds; the sandbox
uses only the standard library in this process; torch, vllm and transformers are imported
inside the backends that need them.
"""

__version__ = "0.1.0"
