"""The GPUs of this machine and how the local backend shares them among its workers.

Each worker gets its own GPUs through CUDA_VISIBLE_DEVICES (set before it imports torch), so
concurrent steps never share GPU 0: `gpus_per_step` consecutive GPUs per worker, and without a
`--workers` or [backend] workers the local backend runs one worker per such group. Torch-free:
the supervisor never initialises CUDA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Mapping

FALLBACK_WORKERS = 2  # local workers on a machine without GPUs, unless told


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """GPU ids the local backend may hand out: $CUDA_VISIBLE_DEVICES when it is set (the machine's
    owner already chose), else every GPU `nvidia-smi -L` lists; none without NVIDIA GPUs."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
        return [] if ids[:1] == ["-1"] else ids
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def local_workers(requested: int | None, backend: Any, gpus: list[str] | None = None) -> int:
    """--workers, else the study's [backend] workers, else one per group of gpus_per_step GPUs,
    else FALLBACK_WORKERS."""
    if requested:
        return requested
    if backend.workers:
        return backend.workers
    gpus = visible_gpus() if gpus is None else gpus
    return max(1, len(gpus) // backend.gpus_per_step) if gpus else FALLBACK_WORKERS


def worker_devices(gpus: list[str], per_step: int, workers: int) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES of each worker slot: `per_step` GPUs each, groups reused in turn when
    workers outnumber them; None without GPUs."""
    if not gpus:
        return None
    if per_step > len(gpus):
        raise ValueError(f"[backend] gpus_per_step = {per_step} but this machine offers "
                         f"{len(gpus)} GPU(s) ({','.join(gpus)})")
    groups = [gpus[i:i + per_step] for i in range(0, len(gpus) - per_step + 1, per_step)]
    return [",".join(groups[w % len(groups)]) for w in range(workers)]
