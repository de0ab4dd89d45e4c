#!/usr/bin/env python
"""Benchmark of training-step speed and memory for each method, with and without the frozen-prefix cache.

    python scripts/bench.py --task rte --samples 256 --batch_size 32 --repeats 3 [--precision fp32,bf16]

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

With several precisions (``--precision fp32,bf16``) every configuration runs in each, interleaved in the same
repeats, under autocast in the half precision (the cache stored in it too); in bf16 each frozen-backbone
configuration also runs with the backbone's weights stored in bf16 once (``--model_dtype bfloat16``, "bf16
weights") instead of cast by autocast at every step, and the ratios print each configuration's fp32 step over its
bf16 one beside the matmul rates of both. It also reports full fine-tuning's achieved GFLOP/s (counted as 6 x linear-layer parameters x tokens plus the
attention products) against a large matmul in the same precision, timed in the same run. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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

from peftlab.cache import CachedCollator, CachedDataset, FrozenPrefixCache, need_of
from peftlab.fastdropout import use_fast_dropout
from peftlab.glue.data import load_run_data
from peftlab.glue.tasks import get_task
from peftlab.lab.workspace import tokenize
from peftlab.methods import PeftArguments
from peftlab.modeling import HeadConfig, build_classifier, resolve_model_path


@dataclass
class Config:
    name: str
    method: str
    options: dict
    cache: bool = False
    peer: bool = False  # HuggingFace peft's LoRA instead of ours
    precision: str = "fp32"  # autocast dtype (fp32: none)
    model_dtype: str = "float32"  # the backbone's stored weights (bfloat16: a frozen backbone kept in bf16)
    fast_dropout: bool = False  # dropout masks from peftlab.fastdropout instead of torch's bernoulli_

    @property
    def label(self) -> str:
        if self.precision == "fp32" and self.model_dtype == "float32" and not self.fast_dropout:
            return self.name
        weights = ", bf16 weights" if self.model_dtype == "bfloat16" else ""
        dropout = ", fast dropout" if self.fast_dropout else ""
        return f"{self.name} [{self.precision}{weights}{dropout}]"


def in_precisions(base: list[Config], precisions: list[str], dropouts: list[str] = ("torch",)) -> list[Config]:
    """Every configuration in each precision and dropout; a frozen backbone in bf16 also with its weights stored in
    bf16. HF peft's LoRA keeps torch's dropout (it is the reference as a user runs it)."""
    out = []
    for dropout in dropouts:
        fast = dropout == "fast"
        for precision in precisions:
            for config in base:
                if fast and config.peer:
                    continue
                out.append(dataclasses.replace(config, precision=precision, fast_dropout=fast))
                if precision == "bf16" and config.method != "full" and not config.peer:
                    out.append(
                        dataclasses.replace(config, precision=precision, model_dtype="bfloat16", fast_dropout=fast)
                    )
    return out


DEVICE = torch.device("cpu")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def configs(top: int) -> list[Config]:
    from peftlab.lab.protocols import paper_method_options

    PAPER_METHOD_OPTIONS = paper_method_options()

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
        Config("HF peft lora q,v all layers r=8", "probe", lora, peer=True),  # paired by name with ours
        Config(f"prefix@{top}", f"prefix@{top}", {"prefix_length": 16}),
    ]  # fmt: skip
    cached = [Config(c.name + " +cache", c.method, c.options, cache=True) for c in base if c.name in ("probe", f"ffn@{top}", f"adapter@{top}", f"parallel adapter@{top}", f"prefix@{top}")]  # fmt: skip
    paper = [Config(f"paper adapter@{paper_layer} +cache", f"adapter@{paper_layer}", paper_adapter, cache=True)]
    return base + cached + paper


def paper_configs(layers: int) -> list[Config]:
    """Every method at the paper's layers (its 5 and 10 of 12, scaled to ``layers``) and sizes (its scripts'
    options, :func:`peftlab.lab.protocols.paper_method_options`), each frozen one with and without the cache."""
    from peftlab.lab.protocols import paper_method_options

    PAPER = paper_method_options()

    low, high = layers * 5 // 12, layers * 10 // 12
    frozen = [
        Config("probe", "probe", {}),
        Config(f"adapter@{low}", f"adapter@{low}", PAPER["adapter"]),
        Config(f"parallel adapter@{low}", f"adapter@{low}", {**PAPER["adapter"], "adapter_form": "parallel"}),
        Config(f"lora@{high}", f"lora@{high}", PAPER["lora"]),
        Config(f"HF peft lora@{high}", "probe", {**PAPER["lora"], "layers": [high]}, peer=True),
        Config(f"prefix@{high}", f"prefix@{high}", PAPER["prefix"]),
        Config(f"bitfit@{high}", f"bitfit@{high}", PAPER["bitfit"]),
        Config(f"ffn@{high}", f"ffn@{high}", PAPER["ffn"]),
        Config(f"ffn@{low}", f"ffn@{low}", PAPER["ffn"]),
        # the adapter's budget
        Config(f"sparse@{low}", f"sparse@{low}", {"sparse_budget": 2690, "sparse_mask": "magnitude"}),
    ]
    cached = [dataclasses.replace(c, name=c.name + " +cache", cache=True) for c in frozen if not c.peer]
    return [Config("full", "full", {}), *frozen, *cached]


def build(config: Config, model_path: str, num_labels: int, pooling: str):
    torch.manual_seed(0)
    model = build_classifier(
        model_path, HeadConfig(num_labels, pooling=pooling),
        PeftArguments(method=config.method, **{k: v for k, v in config.options.items() if k != "layers"}),
        reads_cache=config.cache, model_dtype=config.model_dtype,
    )  # fmt: skip
    if config.fast_dropout:
        use_fast_dropout(model)
    if config.peer:
        import peft

        targets = config.options["lora_targets"].split(",")
        lora = peft.LoraConfig(
            r=config.options["lora_rank"], lora_alpha=config.options["lora_alpha"], target_modules=targets,
            layers_to_transform=config.options.get("layers"),
        )  # fmt: skip
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


def epoch(model, optimizer, data, collate, groups, precision: str = "fp32") -> list[float]:
    """One optimizer step per group, under autocast for fp16/bf16 (a gradient scaler for fp16, as the Trainer
    uses); returns each step's seconds (inputs already on the device)."""
    times = []
    for group in groups:
        batch = {k: v.to(DEVICE) for k, v in collate([data[i] for i in group]).items()}
        _sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=DTYPES[precision]) if precision in DTYPES else contextlib.nullcontext():
            loss = model(**batch).loss
        if SCALER is not None and precision == "fp16":
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


def matmul_gflops(precision: str = "fp32") -> float:
    """The device's matrix-product rate in ``precision`` (fp32, or fp16/bf16 inputs)."""
    dtype = DTYPES.get(precision, torch.float32)
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
        # the tokenizer's own inputs (MPNet's has no token_type_ids) and the label
        features.select_columns(
            [c for c in ("input_ids", "attention_mask", "token_type_ids", "label") if c in features.column_names]
        ),
        DataCollatorWithPadding(tokenizer),
    )
    if config.cache:
        need = need_of(model)
        start = time.perf_counter()
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[config.precision]
        cached = FrozenPrefixCache(model.backbone, cache_dir, dtype).get(features, need, tokenizer)
        built = time.perf_counter() - start
        start = time.perf_counter()
        cached = FrozenPrefixCache(model.backbone, cache_dir, dtype).get(
            features, need, tokenizer
        )  # disk, as a new process
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
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        for group in groups:
            epoch(model, optimizer, data, collate, [group], config.precision)
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
        epoch(model, optimizer, data, collate, groups[:1], config.precision)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            epoch(model, optimizer, data, collate, groups, config.precision)
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
                steps = epoch(model, optimizer, data, collate, groups[b], config.precision)
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
    parser.add_argument(
        "--configs", default="default", choices=["default", "paper"],
        help="default: every method at the top layer, common sizes; paper: the paper's layers and sizes",
    )  # fmt: skip
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
    parser.add_argument(
        "--precision", default="fp32",
        help="comma-separated autocast dtypes among fp32, fp16, bf16, run side by side (e.g. fp32,bf16)",
    )  # fmt: skip
    parser.add_argument(
        "--dropout", default="torch",
        help="comma-separated dropout masks, run side by side: torch (bernoulli_) and fast (peftlab.fastdropout)",
    )  # fmt: skip
    parser.add_argument("--_memory_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE, SCALER
    DEVICE = torch.device(args.device)
    precisions = list(dict.fromkeys(args.precision.split(",")))
    bad = [p for p in precisions if p not in ("fp32", "fp16", "bf16")]
    if bad:
        parser.error(f"--precision {','.join(bad)}: choose among fp32, fp16, bf16")
    SCALER = torch.amp.GradScaler("cuda") if "fp16" in precisions and DEVICE.type == "cuda" else None
    if args._memory_child:
        return memory_child(args._memory_child)
    task, path, tokenizer, features = prepare(args)
    top = len(build(Config("x", "probe", {}), path, task.num_labels, args.pooling).backbone.encoder.layer) - 1
    if args.per_example:
        return per_example(args, [c for c in configs(top) if c.name.startswith("paper adapter")][0], task, path,
                           tokenizer, features)  # fmt: skip
    dropouts = list(dict.fromkeys(args.dropout.split(",")))
    if set(dropouts) - {"torch", "fast"}:
        parser.error(f"--dropout {args.dropout}: choose among torch, fast")
    every = in_precisions(configs(top) if args.configs == "default" else paper_configs(top + 1), precisions, dropouts)
    chosen = [
        c for c in every if args.only is None or c.name in args.only.split(";") or c.label in args.only.split(";")
    ]
    if args.profile:
        return profile(
            args, [c for c in every if args.profile in (c.name, c.label)][0], task, path, tokenizer, features
        )
    groups = batches(features, args.batch_size)
    print(f"# bench: task={args.task} samples={len(features)} batch={args.batch_size} steps/epoch={len(groups)} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} device={args.device} "
          f"({torch.cuda.get_device_name() if args.device == 'cuda' else torch.backends.cpu.get_cpu_capability()}) "
          f"precision={args.precision}")  # fmt: skip
    with tempfile.TemporaryDirectory() as cache_dir:
        # Each configuration gets its own cache folder, so that "cold" really computes (configurations at the
        # same layer would otherwise share one file, which is the sweep case that "warm" measures).
        state = {
            c.label: setup(c, args, task, path, tokenizer, features, Path(cache_dir) / str(index))
            for index, c in enumerate(chosen)
        }
        # Warm-up: one step on the CPU; on a GPU one step per batch shape (dynamic padding makes every batch a new
        # shape, and kernels are chosen per shape on first use: with one warm-up step the first timed epoch paid it).
        warmup = groups if DEVICE.type == "cuda" else groups[:1]
        for config in chosen:
            model, optimizer, data, collate, *_rest = state[config.label]
            epoch(model, optimizer, data, collate, warmup, config.precision)
        steps = {c.label: [] for c in chosen}
        epochs = {c.label: [] for c in chosen}
        gflops: dict[str, list[float]] = {p: [] for p in precisions}
        gpu_memory: dict[str, float] = {}
        for _ in range(args.repeats):
            for precision in precisions:
                gflops[precision].append(matmul_gflops(precision))
            for config in chosen:
                model, optimizer, data, collate, *_rest = state[config.label]
                if DEVICE.type == "cuda" and config.label not in gpu_memory:
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                times = epoch(model, optimizer, data, collate, groups, config.precision)
                if DEVICE.type == "cuda" and config.label not in gpu_memory:
                    gpu_memory[config.label] = (torch.cuda.max_memory_allocated() - before) / 2**20
                steps[config.label].append(statistics.median(times))
                epochs[config.label].append(sum(times))
    rates = {p: statistics.median(v) for p, v in gflops.items()}
    if DEVICE.type == "cuda":
        memory = {c.label: gpu_memory[c.label] for c in chosen}  # peak GPU memory over one epoch, beyond the model
    else:
        memory = {c.label: (None if args.no_memory else peak_memory(args, c)) for c in chosen}
    print(
        "\n| configuration | trainable params | step (s) | samples/s | vs full | cache build / load (s) | 3 epochs cold (s) | 3 epochs warm (s) | peak extra memory (MB) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    by_label = {c.label: statistics.median(steps[c.label]) for c in chosen}
    for config in chosen:
        model, _, _, _, built, loaded = state[config.label]
        step = by_label[config.label]
        per_epoch = statistics.median(epochs[config.label])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        cold = (built if config.cache else 0) + 3 * per_epoch
        warm = (loaded if config.cache else 0) + 3 * per_epoch
        full = by_label.get(dataclasses.replace(config, name="full", model_dtype="float32").label)
        vs_full = f"{step / full:.2f}x" if full else "-"
        cache = f"{built:.1f} / {loaded:.2f}" if config.cache else "-"
        mem = "-" if memory[config.label] is None else f"{memory[config.label]:.0f}"
        print(
            f"| {config.label} | {trainable:,} | {step:.3f} | {len(features) / per_epoch:.1f} | {vs_full} | {cache} | {cold:.1f} | {warm:.1f} | {mem} |"
        )
    print("\nRatios (medians of interleaved repeats):")
    for precision, rate in rates.items():
        print(f"- {precision} matmul ({matmul_size()}^3): {rate:.1f} GFLOP/s")
    for peer in (c for c in chosen if c.peer):
        ours = dataclasses.replace(peer, name=peer.name.removeprefix("HF peft "), peer=False).label
        if ours in by_label:
            print(f"- our {ours} step / HF peft's: {by_label[ours] / by_label[peer.label]:.2f}")
    for config in chosen:
        plain = dataclasses.replace(config, name=config.name.removesuffix(" +cache"), cache=False)
        if config.cache and plain.label in by_label:
            plain_epoch = statistics.median(epochs[plain.label])
            cached_epoch = statistics.median(epochs[config.label])
            built, loaded = state[config.label][4], state[config.label][5]
            print(f"- {plain.label}: epoch after the first {plain_epoch / cached_epoch:.1f}x faster with the cache; "
                  f"3 epochs warm {3 * plain_epoch / (loaded + 3 * cached_epoch):.1f}x, cold {3 * plain_epoch / (built + 3 * cached_epoch):.1f}x")  # fmt: skip
    if len(precisions) > 1:
        for config in chosen:
            if config.precision != "fp32":
                reference = dataclasses.replace(config, precision="fp32", model_dtype="float32").label
                if reference in by_label:
                    print(f"- {config.label}: step {by_label[reference] / by_label[config.label]:.2f}x faster than fp32 ({by_label[reference]:.3f} s / {by_label[config.label]:.3f} s)")  # fmt: skip
    for config in chosen:
        if config.fast_dropout:  # against the same configuration with torch's dropout, in fp32 and in its precision
            same = dataclasses.replace(config, fast_dropout=False)
            fp32 = dataclasses.replace(config, precision="fp32", model_dtype="float32", fast_dropout=False)
            for reference in dict.fromkeys([same.label, fp32.label]):
                if reference in by_label:
                    print(f"- {config.label}: step {by_label[reference] / by_label[config.label]:.2f}x faster than {reference} ({by_label[reference]:.3f} s / {by_label[config.label]:.3f} s)")  # fmt: skip
    for config in chosen:
        if config.name.startswith("paper adapter@"):
            model = state[config.label][0]
            flops = cached_step_flops(model, features, groups, model.frozen_prefix)
            rate = rates[config.precision]
            floor = flops / (rate * 1e9)
            print(f"- {config.label}: {flops / by_label[config.label] / 1e9:.1f} GFLOP/s achieved vs {rate:.1f} GFLOP/s "
                  f"{config.precision} matmul rate: the step takes {by_label[config.label] / floor:.2f}x its matmul floor ({floor:.3f} s)")  # fmt: skip
    for config in chosen:
        if config.name == "full":
            flops = full_step_flops(state[config.label][0], features, groups)
            achieved = flops / by_label[config.label] / 1e9
            rate = rates[config.precision]
            print(f"- {config.label}: {achieved:.1f} GFLOP/s achieved vs {rate:.1f} GFLOP/s {config.precision} matmul = {achieved / rate:.0%}")  # fmt: skip
            for other in chosen:
                if other.precision == config.precision and memory[other.label] is not None and memory[config.label]:
                    print(f"- peak extra memory {other.label}: {memory[other.label] / memory[config.label]:.2f}x {config.label}")  # fmt: skip


if __name__ == "__main__":
    main()
