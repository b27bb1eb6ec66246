"""Hardware facts in one table: GPU memory, bf16 support, memory bandwidth, Kaggle machine shapes.

Why one place: the capacity estimate (offline/capacity.py), the tuner's roofline throughput
(offline/tuning/throughput.py) and the notebook build (build_kernel.py's kernel-metadata) each
need some of these figures for the same hardware names. Pure data, stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class GPU:
    """Attributes:
    memory_bytes: usable memory as torch reports it (not the marketing figure).
    bf16: whether bf16 runs natively.
    bandwidth: memory bandwidth in bytes/s (data sheets).
    """

    memory_bytes: float
    bf16: bool
    bandwidth: float


GPUS: dict[str, GPU] = {
    "t4": GPU(14.75 * GIB, False, 320e9),
    "p100": GPU(15.89 * GIB, False, 732e9),
    "l4": GPU(22.05 * GIB, True, 300e9),
    "a100": GPU(79.15 * GIB, True, 2039e9),
    "h100": GPU(79.10 * GIB, True, 3350e9),
    "h200": GPU(139.8 * GIB, True, 4800e9),
}

# kernel-metadata.json `machine_shape` per preset hardware (read by `kaggle kernels push`;
# build_kernel's `--accelerator` overrides it). Names from the Kaggle CLI's documented
# accelerator list; "NvidiaTeslaT4" is "GPU T4 x2".
MACHINE_SHAPES: dict[str, str] = {
    "t4x2": "NvidiaTeslaT4",
    "l4x4": "NvidiaL4",
    "h100x1": "NvidiaH100",
}


def parse_hardware(hardware: str) -> tuple[str, int]:
    """ "t4x2" -> ("t4", 2)."""
    name, _, count = hardware.lower().partition("x")
    if name not in GPUS or not count.isdigit():
        raise ValueError(
            f"hardware {hardware!r}: expected <gpu>x<count> with gpu in {sorted(GPUS)}"
        )
    return name, int(count)
