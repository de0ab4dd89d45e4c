"""Whether this CPU runs bf16 faster than float32: one linear of the bundled MiniLM's FFN shape (2048 tokens x 384
-> 1536), timed in both dtypes on the threads torch has (set OMP_NUM_THREADS=1 for one core's figure).

    OMP_NUM_THREADS=1 python scripts/bf16_check.py [--repeats 20]

Prints GFLOP/s per dtype and what oneDNN reports (native bf16: avx512_bf16 or AMX). Without native bf16, --bf16 runs
are slower than float32 ones (docs/performance.md)."""

from __future__ import annotations

import argparse
import time

import torch

from peftlab.lab.args import cpu_has_fast_bf16


def gflops(dtype: torch.dtype, repeats: int, tokens: int = 2048, width: int = 384, ffn: int = 1536) -> float:
    x, w = torch.randn(tokens, width, dtype=dtype), torch.randn(ffn, width, dtype=dtype)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, w)
    return 2 * tokens * width * ffn * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    repeats = parser.parse_args().repeats
    fp32, bf16 = gflops(torch.float32, repeats), gflops(torch.bfloat16, repeats)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_fast_bf16()}")
    print(
        f"float32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s ({bf16 / fp32:.2f}x), {torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()
