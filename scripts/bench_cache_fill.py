#!/usr/bin/env python
"""Frozen-prefix cache fill: length-sorted batches (what ``peftlab.cache.compute_cache`` does) against batches in
the data's own order (what it did before), on a random sample of QQP validation pairs, bundled MiniLM, one thread.

    python scripts/bench_cache_fill.py [--glue_dir ../shared/glue] [--samples 1024] [--depth 6]

Depth 6 is a probe's cache (all layers); depth 2 that of a module at layer 2. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from transformers import AutoTokenizer

from peftlab.cache import compute_cache
from peftlab.glue.data import load_glue_split
from peftlab.glue.tasks import get_task
from peftlab.lab.workspace import tokenize
from peftlab.methods import PeftArguments
from peftlab.modeling import HeadConfig, build_classifier, resolve_model_path


def padding_ratios(lengths: list[int], size: int) -> tuple[float, float]:
    """Padded tokens / real tokens in batches of ``size``: in the data's own order, and length-sorted."""

    def padded(order: list[int]) -> int:
        return sum(max(order[s : s + size]) * len(order[s : s + size]) for s in range(0, len(order), size))

    return padded(lengths) / sum(lengths), padded(sorted(lengths)) / sum(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", "../shared/glue"))
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=6, choices=range(1, 7))
    parser.add_argument("--batch_size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = resolve_model_path(None)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def features(task_name: str, split: str):
        task = get_task(task_name)
        return tokenize(load_glue_split(task, args.glue_dir, split), task.text_fields, tokenizer, 128, False)

    qqp = features("qqp", "validation")
    for name, data in (("QQP validation", qqp), ("SST-2 train", features("sst2", "train"))):
        own, ordered = padding_ratios([len(ids) for ids in data["input_ids"]], args.batch_size)
        print(
            f"{name}: padded / real tokens in batches of {args.batch_size}: {own:.2f} own order, {ordered:.3f} sorted"
        )
    data = qqp.shuffle(seed=0).select(range(args.samples))
    method = "probe" if args.depth == 6 else f"adapter@{args.depth}"
    model = build_classifier(path, HeadConfig(num_labels=2, pooling="mean"), PeftArguments(method=method))
    size = args.batch_size

    def in_own_order():  # one call per batch: sorting inside a batch does not change its padded width
        chunks = [data.select(range(s, min(s + size, len(data)))) for s in range(0, len(data), size)]
        return [t for chunk in chunks for t in compute_cache(model, chunk, args.depth, tokenizer, size)]

    timings = {}
    for name, fill in (("length-sorted", lambda: compute_cache(model, data, args.depth, tokenizer, size)),
                       ("own order", in_own_order)):  # fmt: skip
        start = time.perf_counter()
        outputs = fill()
        timings[name] = time.perf_counter() - start
        print(f"{name}: {timings[name]:.1f} s for {len(outputs)} examples", flush=True)
    print(f"speed-up: {timings['own order'] / timings['length-sorted']:.2f}x")


if __name__ == "__main__":
    main()
