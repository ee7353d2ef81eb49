"""The deployment subcommands of ``prunekit``: ``export`` (ONNX) and ``compress`` (sparse storage).

``cli.build_parser`` calls :func:`add_deploy_commands`; like ``cli.py`` this module reads
arguments and prints for the user, and nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch

from prunekit.errors import PrunekitError


def _check_inputs(arch, batch: int) -> torch.Tensor:
    """Seeded random inputs of the checkpoint's shape (zeros for integer inputs such as token ids)."""
    if not arch.input_shape:
        raise PrunekitError("the checkpoint stores no input_shape, so there is nothing to build example inputs "
                            "from; export it from Python with prunekit.export_onnx(model, example_inputs, path)")
    dtype = getattr(torch, arch.input_dtype)
    if not dtype.is_floating_point:
        return torch.zeros(batch, *arch.input_shape, dtype=dtype)
    return torch.randn(batch, *arch.input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def _check_destination(source: str, destination: str, option: str, overwrite: bool) -> None:
    """Refuse to write over the checkpoint being read, or over any existing file without --overwrite."""
    target = Path(destination)
    if target.exists() and Path(source).exists() and os.path.samefile(source, destination):
        raise PrunekitError(f"{option} '{destination}' is the checkpoint being read; write to another file")
    if target.is_dir():
        raise PrunekitError(f"{option} '{destination}' is a folder; give the path of the file to write")
    if target.exists() and not overwrite:
        raise PrunekitError(f"{option} '{destination}' exists; pass --overwrite to replace it (it is replaced only "
                            "once the new file is complete)")


def _cmd_export(args: argparse.Namespace) -> None:
    from prunekit.arch import ArchSpec
    from prunekit.checkpoint import load_checkpoint
    from prunekit.deploy.onnx_export import export_onnx

    if args.batch_size < 2:
        raise PrunekitError(f"--batch-size must be at least 2 (the batch axis is exported as dynamic); "
                            f"got {args.batch_size}")
    _check_destination(args.checkpoint, args.onnx, "--onnx", args.overwrite)
    model, info = load_checkpoint(args.checkpoint, trust_factory=args.trust_factory)
    inputs = _check_inputs(ArchSpec.from_dict(info["arch"]), args.batch_size)
    done = export_onnx(model, inputs, args.onnx)
    print(f"{done.path}: {done.file_bytes:,} bytes, batch axis dynamic; onnxruntime agrees with torch to "
          f"{done.max_abs_diff:.2g} (largest output {done.output_scale:.3g}) at batch "
          f"{' and '.join(str(shape[0]) for shape in done.checked_shapes)}")
    print(f"  {100 * done.zero_fraction:.1f}% of the weight values in the graph are zeros: onnxruntime stores and "
          "multiplies them densely, so unstructured sparsity neither shrinks the file nor speeds it up "
          "(removed units do; use 'prunekit compress' for a small file)")


def _cmd_compress(args: argparse.Namespace) -> None:
    from prunekit.deploy.storage import compress_checkpoint

    _check_destination(args.checkpoint, args.out, "OUT", args.overwrite)
    source_bytes = Path(args.checkpoint).stat().st_size if Path(args.checkpoint).is_file() else None
    report = compress_checkpoint(args.checkpoint, args.out, fp16=args.fp16, trust_factory=args.trust_factory)
    print(f"{args.checkpoint}: {source_bytes:,} bytes")
    print(f"{report.path} ({report.storage}): {report.file_bytes:,} bytes, {report.ratio:.1f}x smaller than the "
          f"dense weights ({report.dense_bytes:,} bytes: torch.save of the state_dict, masks baked in) and "
          f"{source_bytes / report.file_bytes:.1f}x smaller than the checkpoint")
    width = max(len(tensor.name) for tensor in report.tensors)
    for tensor in report.tensors:
        numel = math.prod(tensor.shape)
        kept = f"{100 * tensor.kept / numel:5.1f}% kept" if numel else "empty"
        print(f"  {tensor.name:<{width}}  {str(tensor.shape):<12} {tensor.encoding:<7} {kept}  "
              f"{tensor.stored_bytes:>10,} bytes")
    if args.fp16:
        print("values rounded to float16: outputs agree to about 5e-4 of their size, not bit for bit")


def add_deploy_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``compress`` to the ``prunekit`` subcommands."""
    export = commands.add_parser("export", help="export a checkpoint to ONNX, checked in onnxruntime")
    export.add_argument("checkpoint", help="a prunekit checkpoint (dense, masked, shrunk or compressed)")
    export.add_argument("--onnx", required=True, metavar="OUT.onnx", help="where to write the ONNX file")
    export.add_argument("--batch-size", type=int, default=2,
                        help="rows of the random batch the export is traced and checked on (default 2; the "
                             "batch axis stays dynamic)")
    compress = commands.add_parser("compress", help="rewrite a checkpoint storing only nonzero weights")
    compress.add_argument("checkpoint", help="a prunekit checkpoint")
    compress.add_argument("out", help="the compressed checkpoint to write (load it with load_checkpoint)")
    compress.add_argument("--fp16", action="store_true", help="store values as float16 (about half the size)")
    for sub in (export, compress):
        sub.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        sub.add_argument("--trust-factory", action="store_true",
                         help="allow a checkpoint whose model is built by a factory function")
    export.set_defaults(handler=_cmd_export)
    compress.set_defaults(handler=_cmd_compress)
