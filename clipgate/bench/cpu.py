"""What the CPU can do natively, from the flags Linux lists in /proc/cpuinfo.

bfloat16 matrix multiplies run natively only with AVX512-BF16 or AMX; elsewhere PyTorch
emulates them, far slower than float32, and a bfloat16 figure would measure the emulation.
"""

from __future__ import annotations

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags in the `flags` lines of /proc/cpuinfo text (x86)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "flags":
            flags.update(value.split())
    return frozenset(flags)


def native_bf16(cpuinfo: str) -> bool:
    """Whether the CPU described by /proc/cpuinfo text multiplies bfloat16 natively."""
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
    """The text of /proc/cpuinfo; empty where there is none (then no flag is found)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def reduced_dtype(device: str, cpuinfo: str) -> tuple[str, str | None]:
    """The reduced dtype the benchmark sets beside float32 on `device`, and why it is not
    measured (None when it is): float16 on CUDA, always measured; bfloat16 on a CPU, measured
    only where the CPU has it natively."""
    if device.startswith("cuda"):
        return "float16", None
    if native_bf16(cpuinfo):
        return "bfloat16", None
    return "bfloat16", (
        "this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag in /proc/cpuinfo), so bfloat16 "
        "would run emulated: the bfloat16 bare sweep and server are skipped"
    )
