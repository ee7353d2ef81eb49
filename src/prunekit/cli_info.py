"""``prunekit info FILE``: what a saved model is, from a prunekit checkpoint or a cached baseline.

Two kinds of file are read, both as data (``torch.load(weights_only=True)``): checkpoints written
by ``prunekit.save_checkpoint`` and the baselines ``prunekit compare`` / ``demo`` cache under
``.prunekit-cache/`` (``{"state_dict": ..., "meta": {"model", "dataset", ...}}``, see
``prunekit.training.get_baseline``). Anything else (a directory, a truncated file, random bytes, a
text file) is refused with a ``PrunekitError`` that says what the file is.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.torch_files import load_data_file

_HINT = ("pass a checkpoint saved by prunekit.save_checkpoint or a cached baseline "
         "(.prunekit-cache/MODEL-DATASET-sSEED-eEPOCHS.pt)")


def is_cached_baseline(payload: Any) -> bool:
    """Whether a loaded file is a baseline cached by ``prunekit.training.get_baseline``.

    >>> is_cached_baseline({"state_dict": {}, "meta": {"model": "lenet5", "dataset": "mnist5k"}})
    True
    >>> is_cached_baseline({"format": "prunekit-checkpoint"})
    False
    """
    return (isinstance(payload, dict) and set(payload) == {"state_dict", "meta"}
            and isinstance(payload["meta"], dict) and {"model", "dataset"} <= set(payload["meta"]))


def load_cached_baseline(path: str | Path, payload: dict) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a cached baseline: ``(model in eval mode, info)`` shaped like ``load_checkpoint``'s.

    >>> import tempfile
    >>> from prunekit.training import baseline_path, get_baseline
    >>> cache = tempfile.mkdtemp()
    >>> model, _ = get_baseline("lenet300", "digits", seed=0, epochs=1, cache_dir=cache, progress=False)
    >>> path = baseline_path("lenet300", "digits", 0, 1, cache)
    >>> loaded, info = load_cached_baseline(path, load_data_file(path, "baseline", ""))
    >>> info["arch"]["input_shape"], bool((loaded.fc1.weight == model.fc1.weight).all())
    ([1, 8, 8], True)
    """
    from prunekit.arch import ArchSpec
    from prunekit.data import load_dataset

    meta = payload["meta"]
    try:
        splits = load_dataset(meta["dataset"])
        arch = ArchSpec(meta["model"], splits.input_shape, splits.num_classes)
        model = arch.build()
        model.load_state_dict(payload["state_dict"], strict=True)
    except (PrunekitError, RuntimeError) as error:
        raise PrunekitError(f"'{path}' is a cached baseline of {meta['model']} on {meta['dataset']} that this "
                            f"prunekit cannot rebuild ({str(error).splitlines()[0]}); delete it: the next compare "
                            "or demo trains it again") from None
    info = {"arch": arch.to_dict(), "structure": None, "masked": False, "meta": meta, "kind": "cached baseline"}
    return model.eval(), info


def read_model_file(path: str | Path, trust_factory: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, info)`` from a prunekit checkpoint or a cached baseline (readable errors otherwise)."""
    from prunekit.checkpoint import FORMAT, load_checkpoint

    payload = load_data_file(path, "prunekit checkpoint or cached baseline", _HINT)
    if is_cached_baseline(payload):
        return load_cached_baseline(path, payload)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PrunekitError(f"'{path}' was saved by torch but is neither a prunekit checkpoint (no 'format': "
                            f"'{FORMAT}' entry) nor a cached baseline; {_HINT}")
    return load_checkpoint(path, trust_factory=trust_factory)


def cmd_info(args: argparse.Namespace) -> None:
    """Print what the file ``args.checkpoint`` holds, its metadata and a per-layer summary."""
    from prunekit.arch import ArchSpec
    from prunekit.metrics import summary

    model, info = read_model_file(args.checkpoint, trust_factory=args.trust_factory)
    arch = ArchSpec.from_dict(info["arch"])
    classes = f", {arch.num_classes} classes" if arch.num_classes is not None else ""
    options = f", kwargs {arch.kwargs}" if arch.kwargs else ""
    kind = ("a cached baseline (plain weights)" if info.get("kind") == "cached baseline"
            else "masked" if info["masked"] else "plain weights")
    print(f"{args.checkpoint}: {arch.model} (input {tuple(arch.input_shape)}{classes}{options}), {kind}")
    removed: dict[str, int] = {}
    for step in (info.get("structure") or {}).get("steps", []):
        removed[step["granularity"]] = removed.get(step["granularity"], 0) + len(step["removed"])
    if removed:
        print("  structurally pruned: " + ", ".join(f"{count} {unit}s removed" for unit, count in removed.items()))
    __import__("prunekit.cli_prune").cli_prune.print_recipe_meta(info.get("meta", {}))  # key: value; recipe stages
    if arch.input_shape:
        print(summary(model, arch.example_inputs()[:1]))
    else:
        print("  (no input_shape stored, so no per-layer summary)")
