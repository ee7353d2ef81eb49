"""Benchmark: file sizes and onnxruntime latency of the trained LeNet-300-100, 90% and 95% sparse.

Targets (issue 12, export and storage):
  - the 95%-sparse model compressed (bitmask / CSR + values) is >= 8x smaller than the dense
    file (stretch: 12x, the deep-compression range for pruning alone);
  - the compressed model reloads with bit-identical logits on the MNIST-5k test split (fp16:
    accuracy within 0.1 pt);
  - onnxruntime at batch 64 runs the 95%-sparse graph as fast as the dense one (about 1.0x:
    it multiplies the zeros densely), reported, not a target.

The baseline is the cached one of ``prunekit compare`` (seed 0; trained on first use), pruned
one-shot by global magnitude and fine-tuned with its masks for --finetune-epochs (10; the sizes do
not depend on it, the accuracies do: 0 shows the one-shot collapse).

Run:  .venv/bin/python benchmarks/deploy_storage.py            (sizes and accuracy; about a minute)
      .venv/bin/python benchmarks/deploy_storage.py --latency  (adds the onnxruntime timings: quiet machine)
Writes benchmarks/results/deploy_storage.md.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch

from prunekit.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from prunekit.data import load_dataset, make_loader
from prunekit.deploy.onnx_export import export_onnx
from prunekit.deploy.onnx_runtime import OnnxRuntimeModel
from prunekit.deploy.storage import save_compressed
from prunekit.masking import bake
from prunekit.metrics import paired_latency
from prunekit.pruner import prune
from prunekit.report import benchmark_markdown
from prunekit.training import default_train_config, get_baseline, train

from _common import RESULTS, parser_for, write_page

SPARSITIES = (0.9, 0.95)


def _logits(model, images):
    with torch.no_grad():
        return model.eval()(images)


def _accuracy(logits, labels) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


def _pruned(model, sparsity: float, splits, epochs: int):
    """A copy pruned by global magnitude, fine-tuned with its masks by the baseline's recipe."""
    pruned = copy.deepcopy(model)
    prune(pruned, "magnitude", sparsity, scope="global")
    if epochs:
        config = default_train_config("lenet300", "mnist5k")
        loader = make_loader(splits.train, config.batch_size, shuffle=True, seed=0, augment_shift=config.augment_shift)
        train(pruned, loader, epochs, lr=config.lr, lr_schedule="cosine", seed=0, progress=False)
    return pruned.eval()


def _sizes(model, arch, splits, epochs: int, folder: Path) -> list[dict]:
    images, labels = splits.test.tensors
    dense_bytes = save_checkpoint(folder / "dense.pt", model, arch).stat().st_size
    rows = []
    for sparsity in SPARSITIES:
        pruned = _pruned(model, sparsity, splits, epochs)
        expected = _logits(pruned, images)
        masked_bytes = save_checkpoint(folder / f"masked-{sparsity}.pt", pruned, arch).stat().st_size
        row = {"sparsity": sparsity, "dense": dense_bytes, "masked": masked_bytes,
               "accuracy": _accuracy(expected, labels)}
        for key, fp16 in (("sparse", False), ("fp16", True)):
            report = save_compressed(folder / f"{key}-{sparsity}.pt", pruned, arch, fp16=fp16)
            logits = _logits(load_checkpoint(report.path)[0], images)
            row[key] = report.file_bytes
            row[f"{key}_accuracy"] = _accuracy(logits, labels)
            row[f"{key}_identical"] = torch.equal(logits, expected)
            row[f"{key}_diff"] = (logits - expected).abs().max().item()
            row[f"{key}_encodings"] = {t.name: t.encoding for t in report.tensors if t.name.endswith("weight")}
        rows.append(row)
    return rows


def _size_table(rows: list[dict]) -> str:
    lines = [f"{'sparsity':>8}  {'dense':>10}  {'masked ckpt':>11}  {'compressed':>10}  {'ratio':>6}  "
             f"{'fp16':>9}  {'ratio':>6}  {'acc pruned':>10}  {'acc loaded':>10}  {'acc fp16':>8}  identical"]
    for row in rows:
        lines.append(
            f"{row['sparsity']:>8.0%}  {row['dense']:>10,}  {row['masked']:>11,}  {row['sparse']:>10,}  "
            f"{row['dense'] / row['sparse']:>5.1f}x  {row['fp16']:>9,}  {row['dense'] / row['fp16']:>5.1f}x  "
            f"{100 * row['accuracy']:>9.2f}%  {100 * row['sparse_accuracy']:>9.2f}%  "
            f"{100 * row['fp16_accuracy']:>7.2f}%  {'yes' if row['sparse_identical'] else 'NO'} "
            f"(fp16 max |diff| {row['fp16_diff']:.1e})")
    encodings = ", ".join(f"{name} {kind}" for name, kind in rows[-1]["sparse_encodings"].items())
    return "\n".join(lines) + f"\n\nencodings at {rows[-1]['sparsity']:.0%}: {encodings}"


def _latency(model, images, folder: Path, threads: int | None) -> tuple[str, list[tuple[str, bool, str]]]:
    sparse = copy.deepcopy(model)
    prune(sparse, "magnitude", 0.95, scope="global")  # the zeros' pattern is all that matters for speed
    batch = images[:64]
    exports = {name: export_onnx(net, batch, folder / f"{name}.onnx")
               for name, net in (("dense", model), ("sparse", sparse))}
    runtimes = {name: OnnxRuntimeModel(done.path, threads=threads) for name, done in exports.items()}
    dense_ms, sparse_ms = paired_latency(runtimes["dense"], runtimes["sparse"], batch, rounds=7, repeats=50)
    torch_dense_ms, torch_sparse_ms = paired_latency(model, bake(copy.deepcopy(sparse)), batch, rounds=7, repeats=50)
    table = "\n".join([
        f"{'':<22}{'dense':>12}{'95% sparse':>12}{'ratio':>8}",
        f"{'ONNX file (bytes)':<22}{exports['dense'].file_bytes:>12,}{exports['sparse'].file_bytes:>12,}"
        f"{exports['dense'].file_bytes / exports['sparse'].file_bytes:>7.2f}x",
        f"{'onnxruntime (ms)':<22}{dense_ms:>12.3f}{sparse_ms:>12.3f}{dense_ms / sparse_ms:>7.2f}x",
        f"{'torch, baked (ms)':<22}{torch_dense_ms:>12.3f}{torch_sparse_ms:>12.3f}"
        f"{torch_dense_ms / torch_sparse_ms:>7.2f}x",
        f"zeros in the sparse graph's weights: {100 * exports['sparse'].zero_fraction:.1f}%; onnxruntime vs torch "
        f"max |diff| {exports['sparse'].max_abs_diff:.1e}",
    ])
    speedup = dense_ms / sparse_ms
    return table, [("onnxruntime runs the 95%-sparse graph at dense speed (0.8x-1.25x)", 0.8 <= speedup <= 1.25,
                    f"{speedup:.2f}x")]


def main() -> None:
    parser = parser_for(__doc__)
    parser.add_argument("--latency", action="store_true", help="also time onnxruntime (quiet machine only)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime / torch threads (default: all)")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning with masks after pruning")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, meta = get_baseline("lenet300", "mnist5k", seed=0, progress=False)
    splits = load_dataset("mnist5k")
    images, labels = splits.test.tensors
    arch = ArchSpec("lenet300", splits.input_shape, splits.num_classes)
    with tempfile.TemporaryDirectory() as folder:
        rows = _sizes(model, arch, splits, args.finetune_epochs, Path(folder))
        latency = _latency(model, images, Path(folder), args.threads) if args.latency else None
    at95 = rows[-1]
    checks = [
        ("95%: compressed >= 8x smaller than dense", at95["dense"] / at95["sparse"] >= 8,
         f"{at95['dense'] / at95['sparse']:.1f}x"),
        ("95%: compressed >= 12x smaller (stretch)", at95["dense"] / at95["sparse"] >= 12,
         f"{at95['dense'] / at95['sparse']:.1f}x"),
        ("reloaded logits bit-identical on the test split", all(row["sparse_identical"] for row in rows),
         ", ".join(f"{row['sparsity']:.0%}: {row['sparse_identical']}" for row in rows)),
        ("fp16: accuracy within 0.1 pt of the pruned model",
         all(abs(row["fp16_accuracy"] - row["accuracy"]) <= 0.001 for row in rows),
         ", ".join(f"{100 * (row['fp16_accuracy'] - row['accuracy']):+.2f} pt" for row in rows)),
    ]
    intro = [
        f"Command: `.venv/bin/python benchmarks/deploy_storage.py{' --latency' if args.latency else ''}`. "
        f"Wall time {time.perf_counter() - started:.0f} s. LeNet-300-100 baseline of seed 0 "
        f"(test accuracy {100 * meta['accuracy']:.2f}%), pruned by global magnitude, then fine-tuned with its "
        f"masks for {args.finetune_epochs} epoch(s) (Adam, cosine from 1e-3); accuracy on the {len(labels):,}-image "
        "MNIST-5k test split.",
        "Bytes on disk: *dense* = the unpruned model's prunekit checkpoint; *masked ckpt* = the pruned model "
        "saved with its masks (stored weights + one bool per weight); *compressed* = "
        "`save_compressed` (bitmask or CSR + float32 values, whichever is smaller per tensor); *fp16* = the same "
        "with float16 values. Ratios are against *dense*.",
    ]
    tables = [_size_table(rows)]
    if latency is None:
        intro.append("onnxruntime latency not measured in this run: `.venv/bin/python benchmarks/deploy_storage.py "
                     "--latency` on a quiet machine adds it.")
    else:
        tables.append(latency[0])
        checks += latency[1]
        intro.append(f"Latency at batch 64, {args.threads or 'all'} thread(s): fastest of 7 alternating rounds of 50 "
                     "runs each (metrics.paired_latency). onnxruntime stores the zeros as dense initializers and "
                     "runs dense kernels, so sparsity buys neither a smaller ONNX file nor speed; a small file is "
                     "`prunekit compress`, speed needs structured pruning.")
    text = benchmark_markdown("Export and storage: LeNet-300-100", intro, tables, checks)
    write_page(RESULTS / "deploy_storage.md", text)


if __name__ == "__main__":
    main()
