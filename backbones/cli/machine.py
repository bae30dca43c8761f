"""What a benchmark records about its machine: CPU model and vector ISA, threads, versions, load
average, GPU, and the fp32 matrix-product rate that bounds any model's GFLOP/s."""
from __future__ import annotations

import os
import platform
import re
import time
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
