"""Where ``prunekit compare`` keeps its results, and ``prunekit merge``.

``--out`` is checked before the first run (prunekit.results_store), each run is written to
``results.json`` the moment it finishes, and Ctrl-C stops the sweep with every finished run kept
(exit status 130, no traceback). ``--resume`` skips the runs already there, ``--force`` starts
over (keeping the old file as a backup), ``--shard I/N`` runs one share of the sweep
(prunekit.sweep) and ``prunekit merge OUT SHARD...`` joins the shares (prunekit.results_merge).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.sweep import Job, Shard

#: the exit status of a sweep stopped by Ctrl-C: 128 + SIGINT, what shells report for it
INTERRUPTED = 130

#: runs the jobs that `skip` lets through, calling `on_run` with each finished run
Runner = Callable[[Callable[[Job], bool], Callable[[dict], None]], object]


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except PrunekitError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_results_options(parser: argparse.ArgumentParser, shards: bool = True) -> None:
    """``--resume`` / ``--force`` (one or the other) and, with `shards`, ``--shard I/N``."""
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the sweep in --out: runs already in its results.json are skipped (the same "
                            "configuration only)")
    again.add_argument("--force", action="store_true",
                       help="start over in --out: its results.json is first moved to results.json.bak-<time>")
    if shards:
        parser.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                            help="run share I of N only (runs dealt round-robin in run order), e.g. 2/4; give each "
                                 "shard its own --out and join them with 'prunekit merge'")


def _announce(path: Path, shard: Shard | None, planned: int, todo: int, done: int) -> None:
    share = f"shard {shard}: " if shard is not None else ""
    skipped = f" ({done} already there)" if done else ""
    print(f"{share}{todo} of {planned} runs to do, each written to {path} as it finishes{skipped}", flush=True)


def sweep(args: argparse.Namespace, settings: dict, jobs: list[Job], run: Runner, show: Callable[[dict], None],
          extra: dict | None = None) -> tuple[list[dict], Path]:
    """Run the `jobs` this command owns into ``args.out`` and return every run in its results.json
    (with --resume, earlier ones too) and the file's path. The file is checked and opened before
    the first run; Ctrl-C exits with INTERRUPTED, every finished run kept."""
    from prunekit.results_store import open_results, read_results

    shard = getattr(args, "shard", None)
    if shard is not None:
        shard.check(jobs)
    store = open_results(args.out, settings, resume=args.resume, force=args.force, extra=extra,
                         shard=None if shard is None else str(shard))
    if store.backup is not None:
        print(f"--force: the previous results were moved to {store.backup}")
    done = store.done()
    todo = [job for job in jobs if (shard is None or shard.takes(job)) and job.id not in done]
    _announce(store.path, shard, len(jobs), len(todo), len(done))
    wanted, finished = {job.id for job in todo}, set()

    def on_run(finished_run: dict) -> None:
        store.add(finished_run)
        finished.add(finished_run["job"]["id"])
        print(f"  [{len(finished)}/{len(todo)}]", end="")
        show(finished_run)

    try:
        run(lambda job: job.id not in wanted, on_run)
    except KeyboardInterrupt:
        kept = len(read_results(store.path)["runs"])  # what is on disk, whenever the interrupt came
        print(f"\ninterrupted: {kept} finished run(s) kept in {store.path}; the same command with "
              "--resume continues from there", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED) from None
    return store.runs, store.path


def compare_zoo(config, args: argparse.Namespace, show: Callable[[dict], None]) -> tuple[list[dict], Path]:
    """``prunekit compare`` on a zoo model (prunekit.harness.run_compare) through `sweep`."""
    from prunekit.harness import run_compare
    from prunekit.harness_plan import planned_jobs

    return sweep(args, asdict(config), planned_jobs(config),
                 lambda skip, on_run: run_compare(config, on_run, skip), show)


def compare_transformer(config, args: argparse.Namespace, show: Callable[[dict], None]) -> tuple[list[dict], Path]:
    """``prunekit compare --model minilm`` (prunekit.harness_transformers) through `sweep`."""
    from prunekit.harness_transformers import (ACCURACY_METRIC, planned_transformer_jobs, run_transformer_compare,
                                               transformer_settings)

    return sweep(args, transformer_settings(config), planned_transformer_jobs(config),
                 lambda skip, on_run: run_transformer_compare(config, on_run, skip), show,
                 extra={"accuracy_metric": ACCURACY_METRIC})


def _cmd_merge(args: argparse.Namespace) -> None:
    from prunekit.report import format_table, format_transformer_table
    from prunekit.report_html import report_from_results
    from prunekit.results_merge import merge_results
    from prunekit.results_store import open_results

    merged = merge_results(args.sources)
    extra = {key: merged[key] for key in ("accuracy_metric", "merged_from", "shards", "shards_missing")
             if key in merged}
    try:
        store = open_results(args.out, merged["config"], force=args.force, extra=extra)
    except PrunekitError as error:  # merge re-joins everything: there is nothing to resume
        raise PrunekitError(str(error).replace("--resume continues it (skipping the finished runs)",
                                               "prunekit merge --force merges again")) from None
    if store.backup is not None:
        print(f"--force: the previous results were moved to {store.backup}")
    store.extend(merged["runs"])
    print((format_transformer_table if "accuracy_metric" in merged else format_table)(store.runs))
    if merged["shards_missing"]:
        print(f"\nnote: shard(s) {', '.join(merged['shards_missing'])} not given: their runs are missing here; "
              "merge again (with --force) once they have run")
    print(f"\n{len(store.runs)} runs from {len(args.sources)} results files written to {store.path}")
    html_path, md_path = report_from_results(store.path)
    print(f"report written to {html_path} and {md_path}")


def add_merge_command(commands) -> None:
    """``prunekit merge OUT SHARD [SHARD ...] [--force]``."""
    merge = commands.add_parser("merge", help="join the results of a sweep's shards (compare --shard I/N)")
    merge.add_argument("out", help="folder for the merged results.json")
    merge.add_argument("sources", nargs="+", metavar="SHARD",
                       help="the --out folder (or results.json) of each shard")
    merge.add_argument("--force", action="store_true",
                       help="replace results already in OUT (moved to results.json.bak-<time> first)")
    merge.set_defaults(handler=_cmd_merge)
