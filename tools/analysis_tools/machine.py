"""What a benchmark records about its machine: CPU model and vector ISA, threads, versions, load
average, GPU, the fp32 matrix-product rate that bounds any model's GFLOP/s; and peak memory."""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import time
from collections.abc import Callable
from importlib.util import find_spec

import torch

ISA_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_bf16', 'amx_int8')
PACKAGES = ('torch', 'mmcv', 'mmengine', 'mmdet', 'mmseg', 'mmpretrain', 'timm', 'onnxruntime')


def gemm_gflop_per_s(n: int, device: str = 'cpu', repeats: int = 5) -> float:
    """fp32 GFLOP/s of the fastest of ``repeats`` n x n by n x n ``torch.mm`` (2 n^3 FLOPs) in
    torch's current thread count."""
    a, b, best = torch.randn(n, n, device=device), torch.randn(n, n, device=device), float('inf')
    for _ in range(repeats + 1):  # + 1 to warm up
        start = time.perf_counter()
        torch.mm(a, b)
        if device == 'cuda':
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def machine_info(device: str = 'cpu', gemm: int = 0) -> dict:
    """The machine as a JSON-ready dict; ``gemm``: N of the timed matrix product (0: none)."""
    cpuinfo = open('/proc/cpuinfo').read() if os.path.isfile('/proc/cpuinfo') else ''  # Linux
    model = re.search(r'^model name\s*:\s*(.*)$', cpuinfo, re.M)
    flags = (re.search(r'^flags\s*:\s*(.*)$', cpuinfo, re.M) or [''] * 2)[1].split()
    return dict(cpu=model[1] if model else platform.processor() or platform.machine(),
                isa=[f for f in ISA_FLAGS if f in flags],
                torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name() if device == 'cuda' else None,
                python=platform.python_version(),
                versions={name: __import__(name).__version__ for name in PACKAGES
                          if find_spec(name)},
                load_average=[round(x, 2) for x in os.getloadavg()],
                gemm=dict(n=gemm, gflop_per_s=gemm_gflop_per_s(gemm, device)) if gemm else None)


def _proc_status_bytes(key: str) -> int:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ':'))


def peak_memory_mib(run: Callable[[], object], device: str = 'cpu', steps: int = 2) -> float:
    """Peak MiB of ``steps`` calls of ``run`` above the memory before them: CUDA's
    ``max_memory_allocated``; on CPUs (Linux) the peak RSS, VmHWM, after glibc has handed memory
    freed by earlier work back to the OS (``malloc_trim``), so that the baseline is what is in use.
    Within a few per cent of a fresh process per model."""
    cuda = device.startswith('cuda')
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL(None).malloc_trim(0)
        with open('/proc/self/clear_refs', 'w') as f:  # VmHWM := VmRSS
            f.write('5')
        base = _proc_status_bytes('VmRSS')
    for _ in range(steps):
        run()
    peak = torch.cuda.max_memory_allocated() if cuda else _proc_status_bytes('VmHWM')
    return (peak - base) / 2**20
