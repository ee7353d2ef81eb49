"""Benchmark: widths the hardware likes, and a measured latency budget, on resnet20 / MNIST-5k.

(a) Why global-scope channel pruning (l1, 50%) was 1.61x faster than dense for 3.94x fewer MACs
    while layer scope gave 2.30x for 3.99x: single 3x3 convolutions timed over channel counts at
    resnet20's spatial sizes (batch 64), each conv of the pruned models timed alone, and whole
    models with kept counts unrounded / rounded to 4, 8, 16 / rounded by the measured multiple
    (``round_to="auto"``, the harness default) vs layer scope; accuracy after the harness's
    fine-tuning (``prunekit.harness.run_compare``).
(b) A measured latency budget of 0.4x dense at batch 64 (``prunekit.allocation.allocate`` with
    ``Budget("latency", 0.4)``, bisected by ``prunekit.latency_budget.meet_latency_budget``):
    accuracy of uniform vs LAMP vs sensitivity allocation at that latency, each fine-tuned with
    the harness's recipe, kept channel counts rounded to the multiple (a) measured.

Timing runs only when the machine is quiet (other processes below 15% of the CPUs and load
average below 1.5; it waits otherwise); every latency is the fastest of 7 alternating rounds of
15 passes per model, dense included in every round, in one process. The single-conv timings run
last, with glibc's malloc thresholds pinned (see ``pin_malloc_thresholds``).

Run:  .venv/bin/python benchmarks/budget_resnet20.py   (about 40 minutes on 2 cores)
      .venv/bin/python benchmarks/budget_resnet20.py --report-only   (re-render the .md from the .json)
Writes benchmarks/results/budget_resnet20.json and benchmarks/results/budget_resnet20.md.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.allocation import allocate
from prunekit.budget import Budget
from prunekit.checkpoint import ArchSpec
from prunekit.data import load_dataset, make_loader
from prunekit.harness import CompareConfig, run_compare
from prunekit.recovery import finetune_lr
from prunekit.io import atomic_write_text
from prunekit.metrics import count_macs, measure_latency, paired_latency
from prunekit.pruner import Pruner
from prunekit.training import default_train_config, evaluate, get_baseline, train
from prunekit.zoo_sensitivity import SensitivityConfig, run_sensitivity

from _common import RESULTS, add_report_only, cpu_name, parser_for, seed_tuple, write_page
from budget_resnet20_report import render

BATCH = 64
ARCH = ArchSpec("resnet20", (1, 28, 28), 10)
#: (name, scope, round_to) of part (a); "auto" lets the harness measure the multiple
PART_A = (("global", "global", None), ("global r4", "global", 4), ("global r8", "global", 8),
          ("global r16", "global", 16), ("global auto", "global", "auto"), ("layer", "layer", None),
          ("layer auto", "layer", "auto"))
SWEEP = ((28, 16), (14, 32), (7, 64))  # resnet20's stages on 28x28 inputs: spatial size, width
ALLOCATIONS = ("uniform", "lamp", "sensitivity")


# --- quiet timing --------------------------------------------------------------------------------


def _busy_share(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over `seconds` (this process is asleep meanwhile), from /proc/stat."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = snapshot()
    time.sleep(seconds)
    total1, idle1 = snapshot()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(label: str, max_busy: float = 0.15, max_load: float = 1.5, poll: float = 30.0) -> dict:
    """Sleep until other processes leave the CPUs idle; returns the load seen when timing began."""
    while True:
        busy, load = _busy_share(), os.getloadavg()[0]
        if busy <= max_busy and load <= max_load:
            print(f"[{label}] timing: load {load:.2f}, CPUs busy {busy:.0%}", flush=True)
            return {"load1": load, "busy": busy, "at": time.strftime("%H:%M:%S")}
        print(f"[{label}] waiting: load {load:.2f}, CPUs busy {busy:.0%}", flush=True)
        time.sleep(poll)


def time_round_robin(models: dict[str, nn.Module], inputs: torch.Tensor, rounds: int = 7,
                     repeats: int = 15) -> dict[str, float]:
    """Fastest round (median of `repeats` passes) of each model; every round runs every model."""
    best = {name: math.inf for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            best[name] = min(best[name], measure_latency(model, inputs, warmup=3, repeats=repeats))
    return best


# --- part (a) ------------------------------------------------------------------------------------


def kernel_sweep(rounds: int = 3) -> list[dict]:
    """One 3x3 conv with c inputs and c outputs at each stage's spatial size, c from width/4 to width."""
    torch.manual_seed(0)
    convs = [(size, width, channels, nn.Conv2d(channels, channels, 3, padding=1, bias=False),
              torch.randn(BATCH, channels, size, size))
             for size, width in SWEEP for channels in range(width // 4, width + 1)]
    best: dict[tuple, float] = {}
    for _ in range(rounds):  # rounds outermost, so a slow moment hits one round of every width
        for size, width, channels, conv, inputs in convs:
            ms = measure_latency(conv, inputs, warmup=2, repeats=10)
            best[(size, channels)] = min(best.get((size, channels), math.inf), ms)
    return [{"size": size, "width": width, "channels": channels, "ms": best[(size, channels)],
             "ns_per_mac": 1e6 * best[(size, channels)] / (BATCH * size * size * 9 * channels * channels)}
            for size, width, channels, _, _ in convs]


def conv_shapes(model: nn.Module, inputs: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Input shape of every Conv2d of `model` at `inputs`."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            shapes[name] = tuple(args[0].shape)
        return hook

    hooks = [module.register_forward_hook(record(name))
             for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(inputs)
    for hook in hooks:
        hook.remove()
    return shapes


def per_conv_times(models: dict[str, nn.Module], inputs: torch.Tensor, rounds: int = 5) -> dict[str, list[dict]]:
    """Each conv of each model timed alone on a random input of the shape it sees."""
    out = {}
    for label, model in models.items():
        rows = []
        for name, shape in conv_shapes(model, inputs).items():
            conv, x = model.get_submodule(name), torch.randn(shape)
            ms = min(measure_latency(conv, x, warmup=2, repeats=10) for _ in range(rounds))
            rows.append({"layer": name, "in": conv.in_channels, "out": conv.out_channels, "size": shape[-1], "ms": ms})
        out[label] = rows
    return out


def out_widths(model: nn.Module) -> list[int]:
    return [module.out_channels for module in model.modules() if isinstance(module, nn.Conv2d)]


def part_a(seeds: tuple[int, ...], epochs: int, batch: torch.Tensor) -> dict:
    runs = []
    for label, scope, round_to in PART_A:
        if round_to == "auto":  # the harness times its candidates before fine-tuning
            wait_for_quiet(f"a: {label} probe")
        config = CompareConfig("resnet20", "mnist5k", ("channel:l1@0.5",), (), scope=scope, seeds=seeds,
                               finetune_epochs=epochs, round_to=round_to, progress=False)
        for run in run_compare(config):
            runs.append({**run, "label": label, "round_to_asked": round_to})
            print(f"(a) {label} s{run['seed']}: {100 * run['accuracy']:.2f}%, round_to {run['round_to']}", flush=True)
    models = _part_a_models(seeds[0], runs)
    quiet = wait_for_quiet("a: models")
    latency = time_round_robin(models, batch)
    table = [{"label": name, "widths": out_widths(model), "macs": count_macs(model, batch[:1])[0], "ms": latency[name]}
             for name, model in models.items()]
    return {"runs": runs, "models": table, "quiet": [quiet]}


def _part_a_models(seed: int, runs: list[dict]) -> dict[str, nn.Module]:
    dense, _ = get_baseline("resnet20", "mnist5k", seed, progress=False)
    return {"dense": dense, **{run["label"]: ARCH.rebuild(run["shrink_record"]) for run in runs if run["seed"] == seed}}


def pin_malloc_thresholds() -> None:
    """Fix glibc's mmap and trim thresholds (32 MB, 1 GB). By default a freed block raises the mmap
    threshold to its size, so whether an activation buffer is a fresh mapping (page faults: a
    16-channel 28x28 conv alone took 4.4 ms instead of 1.2 ms) depends on what ran before; the
    kernel timings below should measure kernels. Cannot be undone: call it after the other timing."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 1 << 30)


def kernel_phase(part: dict, batch: torch.Tensor) -> None:
    """Single convs over channel counts, and each conv of the pruned models alone (malloc pinned)."""
    pin_malloc_thresholds()
    models = _part_a_models(part["runs"][0]["seed"], part["runs"])
    part["quiet"].append(wait_for_quiet("a: kernels"))
    part["sweep"] = kernel_sweep()
    part["per_conv"] = per_conv_times({name: models[name] for name in ("dense", "global", "global r8", "layer")},
                                      batch)


# --- part (b) ------------------------------------------------------------------------------------


def fine_tune(model: nn.Module, train_set, seed: int, epochs: int) -> float:
    """The harness's fine-tuning: the model's recipe at its default fine-tuning lr, shifted digits."""
    recipe = default_train_config("resnet20", "mnist5k")
    lr = finetune_lr("resnet20", recipe.lr)
    loader = make_loader(train_set, recipe.batch_size, shuffle=True, seed=seed, augment_shift=recipe.augment_shift)
    train(model, loader, epochs=epochs, lr=lr, optimizer=recipe.optimizer, weight_decay=recipe.weight_decay,
          lr_schedule=recipe.lr_schedule, seed=seed, progress=False)
    return lr


def allocate_seed(seed: int, ratio: float, round_to: int | None, batch: torch.Tensor) -> dict:
    """Every allocation's layer sparsities at the latency budget, for one seed's baseline."""
    dense, _ = get_baseline("resnet20", "mnist5k", seed, progress=False)
    sensitivity = run_sensitivity(SensitivityConfig("resnet20", "mnist5k", "channel", "l1", seed=seed,
                                                    progress=False))
    found = {}
    for allocation in ALLOCATIONS:
        quiet = wait_for_quiet(f"b: allocate {allocation} s{seed}")
        started = time.perf_counter()
        allocated = allocate(dense, Budget("latency", ratio), allocation, method="l1", granularity="channel",
                             example_inputs=batch, sensitivity=sensitivity if allocation == "sensitivity" else None,
                             round_to=round_to)
        found[allocation] = {**allocated.to_dict(), "quiet": quiet, "seconds": time.perf_counter() - started}
        print(f"(b) s{seed} {allocation}: {allocated.achieved / allocated.dense:.3f}x dense latency, "
              f"sparsity {allocated.sparsity:.3f}", flush=True)
    return found


def part_b(seeds: tuple[int, ...], epochs: int, ratio: float, round_to: int | None, batch: torch.Tensor) -> dict:
    splits = load_dataset("mnist5k")
    test_loader = make_loader(splits.test, 256, shuffle=False)
    example = splits.test.tensors[0][:2]
    runs, finals = [], {}
    for seed in seeds:
        dense, _ = get_baseline("resnet20", "mnist5k", seed, progress=False)
        for allocation, allocated in allocate_seed(seed, ratio, round_to, batch).items():
            model = copy.deepcopy(dense)
            Pruner(model, "l1", None, granularity="channel", example_inputs=example, round_to=round_to, remove=True,
                   layer_sparsity=allocated["layer_sparsity"]).step()
            accuracy_pruned = evaluate(model, test_loader)
            lr = fine_tune(model, splits.train, seed, epochs)
            runs.append({"seed": seed, "allocation": allocation, "allocated": allocated, "widths": out_widths(model),
                         "macs": count_macs(model, example)[0], "macs_dense": count_macs(dense, example)[0],
                         "accuracy_pruned": accuracy_pruned, "accuracy": evaluate(model, test_loader),
                         "accuracy_dense": evaluate(dense, test_loader), "finetune_lr": lr})
            finals[(seed, allocation)] = model
            print(f"(b) s{seed} {allocation}: {100 * runs[-1]['accuracy']:.2f}% after fine-tuning", flush=True)
    quiet = wait_for_quiet("b: final latency")
    for run in runs:  # the fine-tuned models again, in one quiet phase, timed as the budget was (paired)
        dense, _ = get_baseline("resnet20", "mnist5k", run["seed"], progress=False)
        run["latency_dense_ms"], run["latency_ms"] = paired_latency(dense, finals[(run["seed"], run["allocation"])],
                                                                    batch, rounds=7)
    return {"ratio": ratio, "round_to": round_to, "runs": runs, "quiet": quiet}


def _run(args: argparse.Namespace, path: Path) -> None:
    """The parts asked for; the JSON is written after each, so a failure keeps what was measured."""
    payload = json.loads(path.read_text()) if path.exists() and args.part != "all" else {}
    batch = load_dataset("mnist5k").test.tensors[0][:BATCH]
    payload.update(torch=torch.__version__, machine=f"{cpu_name()}, {os.cpu_count()} cores",
                   finetune_epochs=args.finetune_epochs)
    payload.setdefault("wall_seconds", {})
    steps = {"a": ("a",), "b": ("b",), "kernels": ("kernels",), "all": ("a", "b", "kernels")}[args.part]
    for step in steps:
        started = time.perf_counter()
        if step == "a":
            payload["a"] = part_a(seed_tuple(args.seeds_a), args.finetune_epochs, batch)
        elif step == "b":
            chosen = {run["round_to"] for run in payload["a"]["runs"] if run["label"] == "global auto"}
            round_to = chosen.pop() if len(chosen) == 1 else 8
            payload["b"] = part_b(seed_tuple(args.seeds_b), args.finetune_epochs, args.ratio, round_to, batch)
        else:  # last: it pins malloc for the rest of the process
            kernel_phase(payload["a"], batch)
        payload["wall_seconds"][step] = time.perf_counter() - started
        atomic_write_text(path, json.dumps(payload, indent=2))


def main() -> None:
    parser = parser_for(__doc__)
    parser.add_argument("--seeds-a", default="0")
    parser.add_argument("--seeds-b", default="0,1,2")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--part", choices=("a", "b", "kernels", "all"), default="all",
                        help="b and kernels reuse the saved part a")
    add_report_only(parser)
    parser.add_argument("--out", default=str(RESULTS), help="folder for budget_resnet20.json and .md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "budget_resnet20.json"
    if not args.report_only:
        _run(args, path)
    write_page(out / "budget_resnet20.md", render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
