#!/usr/bin/env python
"""Benchmark of training-step speed and memory for each method, with and without the frozen-prefix cache.

    python scripts/bench.py --task rte --samples 256 --batch_size 32 --repeats 3

Every configuration trains the same examples (dynamic padding, length-grouped batches) with AdamW. Repeats are
interleaved across configurations (configuration A, B, C, then A, B, C again...) and medians reported, so that
the ratios in the table were measured side by side under the same machine load. Printed as a Markdown table:

- step: median seconds per optimizer step over one epoch (for cached configurations: steps on cached inputs);
- samples/s: examples per second over that epoch;
- cache build: seconds to compute the frozen-prefix cache (first epoch of a cold run), and to load it from disk;
- 3 epochs (cold / warm): end-to-end time of 3 epochs = cache build (cold) or load (warm) + 3 median epochs;
- peak extra memory: peak RSS during one epoch of steps minus the RSS before it, measured in a fresh
  subprocess per configuration after the model and data are loaded (activations, gradients, optimizer state;
  Linux only: it resets the peak through /proc/self/clear_refs).

It also reports full fine-tuning's achieved GFLOP/s (counted as 6 x linear-layer parameters x tokens plus the
attention products) against a large matmul in the same precision, timed in the same run. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftlab.cache import CachedCollator, CachedDataset, FrozenPrefixCache, need_of  # noqa: E402
from peftlab.glue.data import load_run_data  # noqa: E402
from peftlab.glue.tasks import get_task  # noqa: E402
from peftlab.methods import PeftArguments  # noqa: E402
from peftlab.modeling import HeadConfig, build_classifier, resolve_model_path  # noqa: E402
from peftlab.run import tokenize  # noqa: E402


@dataclass
class Config:
    name: str
    method: str
    options: dict
    cache: bool = False
    peer: bool = False  # HuggingFace peft's LoRA instead of ours


DEVICE = torch.device("cpu")
PRECISION = "fp32"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def configs(top: int) -> list[Config]:
    from peftlab.protocols import PAPER_METHOD_OPTIONS

    lora = {"lora_rank": 8, "lora_alpha": 16, "lora_targets": "query,value"}
    paper_layer = (top + 1) * 5 // 12  # the paper's adapter layer 5 of 12, scaled (2 of 6)
    paper_adapter = {**PAPER_METHOD_OPTIONS["adapter"], "adapter_form": "parallel"}
    base = [
        Config("full", "full", {}),
        Config("probe", "probe", {}),
        Config(f"ffn@{top}", f"ffn@{top}", {}),
        Config(f"adapter@{top}", f"adapter@{top}", {"bottleneck_dim": 64}),
        Config(f"parallel adapter@{top}", f"adapter@{top}", {"bottleneck_dim": 64, "adapter_form": "parallel", "adapter_scaling": 4.0}),
        Config("lora q,v all layers r=8", "lora", lora),
        Config("HF peft lora q,v all layers r=8", "probe", lora, peer=True),
        Config(f"prefix@{top}", f"prefix@{top}", {"prefix_length": 16}),
    ]  # fmt: skip
    cached = [Config(c.name + " +cache", c.method, c.options, cache=True) for c in base if c.name in ("probe", f"ffn@{top}", f"adapter@{top}", f"parallel adapter@{top}", f"prefix@{top}")]  # fmt: skip
    paper = [Config(f"paper adapter@{paper_layer} +cache", f"adapter@{paper_layer}", paper_adapter, cache=True)]
    return base + cached + paper


def build(config: Config, model_path: str, num_labels: int, pooling: str):
    torch.manual_seed(0)
    model = build_classifier(
        model_path, HeadConfig(num_labels, pooling=pooling), PeftArguments(method=config.method, **config.options)
    )
    if config.peer:
        import peft

        targets = config.options["lora_targets"].split(",")
        lora = peft.LoraConfig(
            r=config.options["lora_rank"], lora_alpha=config.options["lora_alpha"], target_modules=targets
        )
        peft.inject_adapter_in_model(lora, model.backbone)
        for name, param in model.backbone.named_parameters():
            param.requires_grad_("lora_" in name)  # peft's own layers (this peer only; ours find them by type)
    return model.to(DEVICE).train()


def batches(features, size: int):
    order = sorted(range(len(features)), key=lambda i: features[i]["length"])
    return [order[i : i + size] for i in range(0, len(order), size)]


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


SCALER: torch.amp.GradScaler | None = None


def epoch(model, optimizer, data, collate, groups) -> list[float]:
    """One optimizer step per group, under autocast for fp16/bf16 (a gradient scaler for fp16, as the Trainer
    uses); returns each step's seconds (inputs already on the device)."""
    times = []
    for group in groups:
        batch = {k: v.to(DEVICE) for k, v in collate([data[i] for i in group]).items()}
        _sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=DTYPES[PRECISION]) if PRECISION in DTYPES else contextlib.nullcontext():
            loss = model(**batch).loss
        if SCALER is not None:
            SCALER.scale(loss).backward()
            SCALER.step(optimizer)
            SCALER.update()
        else:
            loss.backward()
            optimizer.step()
        _sync()
        times.append(time.perf_counter() - start)
    return times


def matmul_size() -> int:
    return 8192 if DEVICE.type == "cuda" else 1024


def matmul_gflops() -> float:
    """The device's matrix-product rate in the benchmark's precision (fp32, or fp16/bf16 inputs)."""
    dtype = DTYPES.get(PRECISION, torch.float32)
    size, repeats = matmul_size(), 10 if DEVICE.type == "cuda" else 20
    a, b = torch.randn(size, size, device=DEVICE, dtype=dtype), torch.randn(size, size, device=DEVICE, dtype=dtype)
    a @ b
    _sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def full_step_flops(model, features, groups) -> float:
    """Training FLOPs per step of full fine-tuning, averaged over the batches: 6 x linear params x tokens +
    attention (QK^T and AV: 4 x seq^2 x hidden per layer forward, x3 with backward)."""
    linear = sum(m.weight.numel() for m in model.backbone.modules() if isinstance(m, nn.Linear))
    layers = model.backbone.config.num_hidden_layers
    hidden = model.backbone.config.hidden_size
    total = 0.0
    for group in groups:
        width = max(features[i]["length"] for i in group)
        tokens = width * len(group)
        total += 6 * linear * tokens + 3 * 4 * layers * width * width * hidden * len(group)
    return total / len(groups)


def cached_step_flops(model, features, groups, depth: int) -> float:
    """Matrix-product FLOPs per step of a frozen-backbone configuration that reads the cache at layer ``depth``:
    the layers from ``depth`` up run forward (2 x linear params x tokens, plus QK^T and AV) and backward for the
    input gradients only (the same again; frozen weights get no gradient); the method's own parameters and the
    head are left out (a few thousand of the ~2 M per layer)."""
    layers = model.backbone.config.num_hidden_layers
    hidden = model.backbone.config.hidden_size
    per_layer = sum(
        m.weight.numel() for m in model.backbone.encoder.layer[depth].modules()
        if isinstance(m, nn.Linear) and not m.weight.requires_grad
    )  # fmt: skip
    total = 0.0
    for group in groups:
        width = max(features[i]["length"] for i in group)
        tokens = width * len(group)
        forward = (layers - depth) * (2 * per_layer * tokens + 4 * width * width * hidden * len(group))
        total += 2 * forward
    return total / len(groups)


def peak_memory(args, config: Config) -> float:
    """Peak RSS growth (MB) over one epoch of steps, in a fresh process (see module docstring)."""
    payload = json.dumps({"config": config.__dict__, "args": vars(args)})
    out = subprocess.run(
        [sys.executable, __file__, "--_memory_child", payload], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def prepare(args):
    task = get_task(args.task)
    run = load_run_data(
        task, glue_dir=args.glue_dir, do_train=True, do_eval=False, do_predict=False, max_train_samples=args.samples
    )
    from transformers import AutoTokenizer

    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    features = tokenize(run.train, task.text_fields, tokenizer, args.max_seq_length, False)
    return task, path, tokenizer, features


def setup(config: Config, args, task, path, tokenizer, features, cache_dir):
    from transformers import DataCollatorWithPadding

    model = build(config, path, task.num_labels, args.pooling)
    built = loaded = 0.0
    data, collate = (
        features.select_columns(["input_ids", "attention_mask", "token_type_ids", "label"]),
        DataCollatorWithPadding(tokenizer),
    )
    if config.cache:
        need = need_of(model)
        model.frozen_prefix = need.depth
        start = time.perf_counter()
        cached = FrozenPrefixCache(model.backbone, cache_dir).get(features, need, tokenizer)
        built = time.perf_counter() - start
        start = time.perf_counter()
        cached = FrozenPrefixCache(model.backbone, cache_dir).get(features, need, tokenizer)  # a new process: disk
        loaded = time.perf_counter() - start
        data, collate = CachedDataset(features, cached, need.kind != "hidden"), CachedCollator(tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer, data, collate, built, loaded


def memory_child(payload: str) -> None:
    spec = json.loads(payload)
    args = argparse.Namespace(**spec["args"])
    config = Config(**spec["config"])
    task, path, tokenizer, features = prepare(args)
    with tempfile.TemporaryDirectory() as cache_dir:
        model, optimizer, data, collate, _, _ = setup(config, args, task, path, tokenizer, features, cache_dir)
        groups = batches(features, args.batch_size)
        collated = [collate([data[i] for i in g]) for g in groups]
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        for batch in collated:
            optimizer.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            optimizer.step()
        after = _status_kb("VmHWM")
    print((after - before) / 1024)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def profile(args, config: Config, task, path, tokenizer, features) -> None:
    """Where one configuration's step time goes: operators by total CPU time, and forward vs backward."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with tempfile.TemporaryDirectory() as cache_dir:
        model, optimizer, data, collate, *_ = setup(config, args, task, path, tokenizer, features, cache_dir)
        groups = batches(features, args.batch_size)
        epoch(model, optimizer, data, collate, groups[:1])
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            epoch(model, optimizer, data, collate, groups)
    print(f"# profile of {config.name}: {len(groups)} steps of batch {args.batch_size}")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=40))


def per_example(args, config: Config, task, path, tokenizer, features) -> None:
    """Per-example step time of ``config`` at several batch sizes, interleaved repeats (medians)."""
    sizes = [int(b) for b in args.per_example.split(",")]
    with tempfile.TemporaryDirectory() as cache_dir:
        model, optimizer, data, collate, *_ = setup(config, args, task, path, tokenizer, features, cache_dir)
        groups = {b: batches(features, b) for b in sizes}
        times: dict[int, list[float]] = {b: [] for b in sizes}
        for _ in range(args.repeats):
            for b in sizes:
                steps = epoch(model, optimizer, data, collate, groups[b])
                times[b].append(sum(steps) / len(features))
    base = statistics.median(times[sizes[0]])
    for b in sizes:
        median = statistics.median(times[b])
        print(f"- {config.name}, batch {b}: {1000 * median:.2f} ms per example ({median / base:.2f}x batch {sizes[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="rte")
    parser.add_argument("--glue_dir", default=os.environ.get("GLUE_DIR", "../shared/glue"))
    parser.add_argument("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--pooling", default="mean")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=None, help="semicolon-separated configuration names to run")
    parser.add_argument("--no_memory", action="store_true", help="skip the per-configuration memory subprocesses")
    parser.add_argument(
        "--profile", default=None, help="print a torch.profiler table of one epoch of this configuration and stop"
    )
    parser.add_argument(
        "--per_example", default=None,
        help="comma-separated batch sizes (e.g. 16,48): per-example step time of the paper adapter config at each, "
        "interleaved; whether several configurations batched into one forward pass would pay",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="autocast dtype")
    parser.add_argument("--_memory_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE, PRECISION, SCALER
    DEVICE, PRECISION = torch.device(args.device), args.precision
    SCALER = torch.amp.GradScaler("cuda") if PRECISION == "fp16" and DEVICE.type == "cuda" else None
    if args._memory_child:
        return memory_child(args._memory_child)
    task, path, tokenizer, features = prepare(args)
    top = len(build(Config("x", "probe", {}), path, task.num_labels, args.pooling).backbone.encoder.layer) - 1
    if args.per_example:
        return per_example(args, [c for c in configs(top) if c.name.startswith("paper adapter")][0], task, path,
                           tokenizer, features)  # fmt: skip
    chosen = [c for c in configs(top) if args.only is None or c.name in args.only.split(";")]
    if args.profile:
        return profile(args, [c for c in configs(top) if c.name == args.profile][0], task, path, tokenizer, features)
    groups = batches(features, args.batch_size)
    print(f"# bench: task={args.task} samples={len(features)} batch={args.batch_size} steps/epoch={len(groups)} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} device={args.device} "
          f"({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}) precision={args.precision}")  # fmt: skip
    with tempfile.TemporaryDirectory() as cache_dir:
        # Each configuration gets its own cache folder, so that "cold" really computes (configurations at the
        # same layer would otherwise share one file, which is the sweep case that "warm" measures).
        state = {
            c.name: setup(c, args, task, path, tokenizer, features, Path(cache_dir) / str(index))
            for index, c in enumerate(chosen)
        }
        # Warm-up: one step on the CPU; on a GPU one step per batch shape (dynamic padding makes every batch a new
        # shape, and kernels are chosen per shape on first use: with one warm-up step the first timed epoch paid it).
        warmup = groups if DEVICE.type == "cuda" else groups[:1]
        for model, optimizer, data, collate, *_rest in state.values():
            epoch(model, optimizer, data, collate, warmup)
        steps = {c.name: [] for c in chosen}
        epochs = {c.name: [] for c in chosen}
        gflops = []
        gpu_memory: dict[str, float] = {}
        for _ in range(args.repeats):
            gflops.append(matmul_gflops())
            for config in chosen:
                model, optimizer, data, collate, *_rest = state[config.name]
                if DEVICE.type == "cuda" and config.name not in gpu_memory:
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                times = epoch(model, optimizer, data, collate, groups)
                if DEVICE.type == "cuda" and config.name not in gpu_memory:
                    gpu_memory[config.name] = (torch.cuda.max_memory_allocated() - before) / 2**20
                steps[config.name].append(statistics.median(times))
                epochs[config.name].append(sum(times))
    matmul = statistics.median(gflops)
    if DEVICE.type == "cuda":
        memory = {c.name: gpu_memory[c.name] for c in chosen}  # peak GPU memory over one epoch, beyond the model
    else:
        memory = {c.name: (None if args.no_memory else peak_memory(args, c)) for c in chosen}
    print(
        "\n| configuration | trainable params | step (s) | samples/s | vs full | cache build / load (s) | 3 epochs cold (s) | 3 epochs warm (s) | peak extra memory (MB) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    full_step = statistics.median(steps["full"]) if "full" in steps else None
    for config in chosen:
        model, _, _, _, built, loaded = state[config.name]
        step = statistics.median(steps[config.name])
        per_epoch = statistics.median(epochs[config.name])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        cold = (built if config.cache else 0) + 3 * per_epoch
        warm = (loaded if config.cache else 0) + 3 * per_epoch
        vs_full = f"{step / full_step:.2f}x" if full_step else "-"
        cache = f"{built:.1f} / {loaded:.2f}" if config.cache else "-"
        mem = "-" if memory[config.name] is None else f"{memory[config.name]:.0f}"
        print(
            f"| {config.name} | {trainable:,} | {step:.3f} | {len(features) / per_epoch:.1f} | {vs_full} | {cache} | {cold:.1f} | {warm:.1f} | {mem} |"
        )
    print("\nRatios (medians of interleaved repeats):")
    by_name = {c.name: statistics.median(steps[c.name]) for c in chosen}
    if {"lora q,v all layers r=8", "HF peft lora q,v all layers r=8"} <= by_name.keys():
        print(
            f"- our LoRA step / HF peft LoRA step: {by_name['lora q,v all layers r=8'] / by_name['HF peft lora q,v all layers r=8']:.2f}"
        )
    for config in chosen:
        if config.cache and config.name.removesuffix(" +cache") in by_name:
            plain = config.name.removesuffix(" +cache")
            plain_epoch = statistics.median(epochs[plain])
            cached_epoch = statistics.median(epochs[config.name])
            built, loaded = state[config.name][4], state[config.name][5]
            print(f"- {plain}: epoch after the first {plain_epoch / cached_epoch:.1f}x faster with the cache; "
                  f"3 epochs warm {3 * plain_epoch / (loaded + 3 * cached_epoch):.1f}x, cold {3 * plain_epoch / (built + 3 * cached_epoch):.1f}x")  # fmt: skip
    for config in chosen:
        if config.name.startswith("paper adapter@"):
            model = state[config.name][0]
            flops = cached_step_flops(model, features, groups, model.frozen_prefix)
            floor = flops / (matmul * 1e9)
            print(f"- {config.name}: {flops / by_name[config.name] / 1e9:.1f} GFLOP/s achieved vs {matmul:.1f} GFLOP/s "
                  f"matmul rate: the step takes {by_name[config.name] / floor:.2f}x its matmul floor ({floor:.3f} s)")  # fmt: skip
    if "full" in by_name:
        flops = full_step_flops(state["full"][0], features, groups)
        achieved = flops / by_name["full"] / 1e9
        print(
            f"- full fine-tuning: {achieved:.1f} GFLOP/s achieved vs {matmul:.1f} GFLOP/s {PRECISION} matmul ({matmul_size()}^3) = {achieved / matmul:.0%}"
        )
        for config in chosen:
            if memory[config.name] is not None and memory.get("full"):
                print(
                    f"- peak extra memory {config.name}: {memory[config.name] / memory['full']:.2f}x full fine-tuning"
                )


if __name__ == "__main__":
    main()
