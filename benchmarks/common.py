"""Helpers shared by the benchmarks: machine description, measured matmul peak, FLOP counting, JSON out."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "device": "cuda" if gpu else "cpu",
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def matmul_peak_flops(
    n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    """Measured FLOP/s of an n×n matmul on this machine (best of ``repeats``): the roofline we compare to."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (forward and backward included if ``fn`` runs them)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
