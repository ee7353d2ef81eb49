"""What the benchmark scripts share: their command-line options, the ``prunekit compare`` commands
some of them run, and the pieces of their markdown pages (table heads, cells, the machine notes).

Run as ``.venv/bin/python benchmarks/NAME.py``, a script has its own folder first on ``sys.path``,
so it imports this file as ``from _common import ...``; the package never imports it. Nothing here
imports torch at module level: some scripts set thread variables before torch loads.

>>> table_head("method", "sparsity", "cosine", align="lrr")
['| method | sparsity | cosine |', '|---|---:|---:|']
>>> seed_tuple("0,1,2"), percent_mean_sd([0.9, 0.92])
((0, 1, 2), '91.00 (± 1.00)')
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

#: the committed results every script writes under
RESULTS = Path(__file__).parent / "results"


# --- command lines -------------------------------------------------------------------------------


def parser_for(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first line of a script's docstring (pass ``__doc__``).

    >>> parser_for("Benchmark: demo.\\n\\nMore.").description
    'Benchmark: demo.'
    """
    return argparse.ArgumentParser(description=doc.splitlines()[0])


def add_seeds(parser: argparse.ArgumentParser, default: str = "0,1,2") -> None:
    """``--seeds``: comma-separated seeds, kept as text for the page (`seed_tuple` reads it)."""
    parser.add_argument("--seeds", default=default)


def add_finetune(parser: argparse.ArgumentParser, epochs: int, lr: float = 1e-3) -> None:
    """``--finetune-epochs`` (default `epochs`) and ``--finetune-lr`` (default `lr`)."""
    parser.add_argument("--finetune-epochs", type=int, default=epochs)
    parser.add_argument("--finetune-lr", type=float, default=lr)


def add_calibration(parser: argparse.ArgumentParser) -> None:
    """The MiniLM benchmarks' calibration / held-out split: sizes, batch size and its seed."""
    parser.add_argument("--calibration-size", type=int, default=128)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)


def add_report_only(parser: argparse.ArgumentParser) -> None:
    """``--report-only``: write the page from the results already saved instead of running again."""
    parser.add_argument("--report-only", action="store_true", help="re-render the .md from the results already written")


def add_only(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """``--only NAME``: run one of `names` (the others' saved results still go on the page)."""
    parser.add_argument("--only", choices=tuple(names), default=None, help="run only this part")


def int_list(text: str) -> list[int]:
    """``"32,64,"`` -> ``[32, 64]``: a comma-separated option, empty parts skipped ('' gives none).

    >>> int_list("32,64,"), int_list("")
    ([32, 64], [])
    """
    return [int(part) for part in text.split(",") if part]


def seed_tuple(text: str) -> tuple[int, ...]:
    """The seeds of a ``--seeds`` text as ints."""
    return tuple(int(seed) for seed in text.split(","))


# --- prunekit compare runs -----------------------------------------------------------------------


def run_prunekit(command: list[str]) -> float:
    """Run ``prunekit <command>`` (the venv's entry point beside this Python); its wall seconds."""
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "prunekit"), *command], check=True)
    return time.perf_counter() - started


def shown_command(command: list[str], out: Path, placeholder: str = "runs") -> str:
    """The command as the page shows it, the machine's `out` folder written as `placeholder`.

    >>> shown_command(["compare", "--out", "/tmp/x/row"], Path("/tmp/x"))
    'prunekit compare --out runs/row'
    """
    return "prunekit " + shlex.join(command).replace(str(out), placeholder)


def command_item(command: list[str], out: Path, seconds: float | None) -> str:
    """One bullet of a page's command list, with its wall time when it was timed.

    >>> command_item(["compare"], Path("/tmp/x"), 41.6), command_item(["compare"], Path("/tmp/x"), None)
    ('- `prunekit compare` (42 s)', '- `prunekit compare`')
    """
    return f"- `{shown_command(command, out)}`" + (f" ({seconds:.0f} s)" if seconds is not None else "")


def runs_now(args: argparse.Namespace, name: str) -> bool:
    """Whether the part `name` runs in this call: not ``--report-only``, and ``--only`` is unset or names it."""
    return not args.report_only and args.only in (None, name)


def run_timed(name: str, command: list[str], timing: dict[str, float], path: Path) -> None:
    """Run ``prunekit <command>``; its wall seconds go into ``timing[name]``, saved at `path` at once."""
    from prunekit.io import atomic_write_text

    timing[name] = run_prunekit(command)
    atomic_write_text(path, json.dumps(timing, indent=2))


def read_timing(path: Path) -> dict[str, float]:
    """The wall seconds saved at `path` by earlier runs, by name; empty when there are none."""
    return json.loads(path.read_text()) if path.is_file() else {}


def read_runs(folder: Path) -> list[dict]:
    """The runs of the ``results.json`` that ``prunekit compare --out folder`` wrote."""
    return json.loads((folder / "results.json").read_text())["runs"]


def method_target_groups(runs: list[dict], keys: tuple[str, ...] = ("method",)
                         ) -> Iterator[tuple[tuple, float, list[dict]]]:  # fmt: skip
    """``(values of keys, sparsity target, runs)``: each combination of `keys` in the order runs
    first show it, and within it every target of the runs, lowest first (seeds together).

    >>> runs = [{"method": "b", "sparsity_target": 0.9}, {"method": "a", "sparsity_target": 0.5}]
    >>> [(key, target, len(members)) for key, target, members in method_target_groups(runs)]
    [(('b',), 0.5, 0), (('b',), 0.9, 1), (('a',), 0.5, 1), (('a',), 0.9, 0)]
    """
    targets = sorted({run["sparsity_target"] for run in runs})
    for key in dict.fromkeys(tuple(run[name] for name in keys) for run in runs):
        for target in targets:
            yield key, target, [run for run in runs if tuple(run[name] for name in keys) == key
                                and run["sparsity_target"] == target]


# --- pages ---------------------------------------------------------------------------------------


def table_head(*columns: str, align: str = "") -> list[str]:
    """The header and rule lines of a markdown table; ``align[i] == "r"`` right-aligns column i."""
    rule = "".join("---:|" if align[index:index + 1] == "r" else "---|" for index in range(len(columns)))
    return ["| " + " | ".join(columns) + " |", "|" + rule]


def percent_mean_sd(values: list[float]) -> str:
    """Mean and population sd of fractions, in percent: ``"91.00 (± 1.00)"``."""
    return f"{100 * statistics.fmean(values):.2f} (± {100 * statistics.pstdev(values):.2f})"


def reached(met: bool) -> str:
    """How a page words a target: ``reached`` or ``NOT reached``."""
    return "reached" if met else "NOT reached"


def ordering(rows: Iterable[dict]) -> str:
    """Rows by descending ``accuracy``: ``"a (0.9500) > b (0.9000)"``.

    >>> ordering([{"label": "b", "accuracy": 0.9}, {"label": "a", "accuracy": 0.95}])
    'a (0.9500) > b (0.9000)'
    """
    return " > ".join(f"{row['label']} ({row['accuracy']:.4f})" for row in sorted(rows, key=lambda r: -r["accuracy"]))


def cpu_name() -> str:
    """The processor as ``platform`` names it (its machine type where it has no name)."""
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, str]:
    """``{"torch": version, "cpu": cpu_name()}`` for a results JSON (imports torch)."""
    import torch

    return {"torch": torch.__version__, "cpu": cpu_name()}


def load_average() -> float:
    """The 1-minute load average now."""
    return os.getloadavg()[0]


def load_note(before_after: list[float]) -> str:
    """``"1-minute load average 1.2 before, 0.8 after"``: how busy the machine was around a run."""
    before, after = before_after
    return f"1-minute load average {before:.1f} before, {after:.1f} after"


def write_page(path: Path, text: str) -> None:
    """Write a results page (atomically: a crash leaves the old one) and print it."""
    from prunekit.io import atomic_write_text

    atomic_write_text(path, text)
    print(text)
