"""``results.json`` of a sweep kept on disk run by run: work that finished is never lost.

`open_results` checks the folder before any run starts: a path that is a file, a
``results.json`` that cannot be read, one that holds runs of a different configuration, or runs
of this one without ``resume`` or ``force``, are refused with an error naming the file, and
nothing is changed. ``force`` starts over and moves the old file aside
(``results.json.bak-<time>``; nothing is deleted); ``resume`` continues the same configuration.
`ResultsStore.add` then rewrites the file atomically (prunekit.io) after every run, so a sweep
stopped by Ctrl-C, a crash or ``kill -9`` leaves a valid file holding every finished run, and
`ResultsStore.done` says which jobs (prunekit.sweep) to skip when it resumes.

The file: ``{"config": settings, "shard": "I/N" or null, "created", "torch", ..., "runs": [...]}``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from prunekit.errors import PrunekitError
from prunekit.io import atomic_write_text

RESULTS_NAME = "results.json"

#: settings that do not change what a run measures: resuming and merging ignore them
NEUTRAL_SETTINGS = ("progress", "cache_dir")

_START_OVER = "--force starts over (the old file is kept as results.json.bak-<time>), or give another --out"


def read_results(path: str | os.PathLike) -> dict:
    """The payload of a results file, checked: an unreadable, truncated or foreign file is
    refused with a PrunekitError naming it (and is left as it is).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "results.json"
    >>> _ = path.write_text('{"config": {}, "runs": [')
    >>> read_results(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: .../results.json is not a readable results file: not valid JSON ...
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PrunekitError(f"cannot read {path}: {error.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrunekitError(f"{path} is not a readable results file: not valid JSON ({error}); it was left as it "
                            f"is. Move it away, or {_START_OVER}") from None
    problem = None
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        problem = "it has no 'config' object"
    elif not isinstance(payload.get("runs"), list) or not all(isinstance(run, dict) for run in payload["runs"]):
        problem = "its 'runs' is not a list of objects"
    if problem:
        raise PrunekitError(f"{path} is not a prunekit results file: {problem}; it was left as it is. Move it "
                            f"away, or {_START_OVER}")
    return payload


def _plain(value):
    """`value` as it reads back from JSON (tuples become lists), for comparing settings."""
    return json.loads(json.dumps(value))


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(stored: dict, wanted: dict, ignore: tuple[str, ...] = NEUTRAL_SETTINGS) -> list[str]:
    """The settings that differ, as ``"key: <stored> there, <wanted> now"``, keys in order.

    >>> differences({"methods": ["magnitude"], "progress": True}, {"methods": ("magnitude", "random")})
    ['methods: ["magnitude"] there, ["magnitude", "random"] now']
    """
    stored, wanted = _plain(stored), _plain(wanted)
    keys = sorted((stored.keys() | wanted.keys()) - set(ignore))
    return [f"{key}: {_shown(stored.get(key))} there, {_shown(wanted.get(key))} now"
            for key in keys if stored.get(key) != wanted.get(key)]


def _run_part(run: dict) -> tuple[str, int] | None:
    job = run.get("job")
    return (job["id"], job["part"]) if isinstance(job, dict) and "id" in job and "part" in job else None


class ResultsStore:
    """An open ``results.json``: `runs` as stored, `add` writes each new run at once; `backup`
    is where ``force`` moved the previous file (None if it did not)."""

    def __init__(self, path: Path, payload: dict, backup: Path | None = None) -> None:
        self.path = path
        self.payload = payload
        self.backup = backup

    @property
    def runs(self) -> list[dict]:
        """The runs in the file, in the order they finished."""
        return list(self.payload["runs"])

    def done(self) -> set[str]:
        """The ids of the jobs whose every run is stored (a lottery job stopped between its
        ticket and its control is not done: it runs again and replaces the ticket)."""
        parts: dict[str, set[int]] = {}
        expected: dict[str, int] = {}
        for run in self.payload["runs"]:
            key = _run_part(run)
            if key is None:
                raise PrunekitError(f"{self.path} holds runs without a job id (written by an older prunekit), so "
                                    f"which ones finished cannot be told; {_START_OVER}")
            parts.setdefault(key[0], set()).add(key[1])
            expected[key[0]] = run["job"].get("parts", 1)
        return {job for job, seen in parts.items() if len(seen) >= expected[job]}

    def add(self, run: dict) -> None:
        """Store `run` (replacing an earlier run of the same job part) and rewrite the file atomically."""
        self.extend([run])

    def extend(self, runs: list[dict]) -> None:
        """Store `runs` with one atomic write of the file."""
        shard = self.payload.get("shard")
        added = [{**run, "shard": shard} if shard is not None else run for run in runs]
        replaced = {_run_part(run) for run in added} - {None}
        kept = [run for run in self.payload["runs"] if _run_part(run) not in replaced]
        self.write({**self.payload, "runs": kept + added})

    def write(self, payload: dict | None = None) -> None:
        """Write `payload` (default: the current one) atomically; it becomes the store's once on disk."""
        payload = self.payload if payload is None else payload
        try:
            atomic_write_text(self.path, json.dumps(payload, indent=2))
        except OSError as error:
            raise PrunekitError(f"cannot write {self.path}: {error.strerror or error}") from None
        self.payload = payload


def _check_folder(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise PrunekitError(f"--out {out_dir} is a file, not a folder: give a folder for {RESULTS_NAME} (it is "
                            "created if missing); the file was left as it is")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrunekitError(f"cannot create the results folder {out_dir}: {error.strerror or error}") from None
    if (out_dir / RESULTS_NAME).is_dir():
        raise PrunekitError(f"{out_dir / RESULTS_NAME} is a folder; give an --out whose {RESULTS_NAME} can be a file")


def _move_aside(path: Path) -> Path:
    """Rename `path` to ``<name>.bak-<time>`` (never over an existing file); returns the new path."""
    stem = f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
    backup, number = path.with_name(stem), 1
    while backup.exists():
        number += 1
        backup = path.with_name(f"{stem}-{number}")
    os.replace(path, backup)
    return backup


def open_results(out_dir: str | os.PathLike, settings: dict, *, resume: bool = False, force: bool = False,
                 extra: dict | None = None, shard: str | None = None) -> ResultsStore:
    """Check ``out_dir/results.json`` for a sweep of `settings` and open it, before any run.

    A new folder, or a file with no runs (a sweep stopped before its first): a fresh file is
    written now, so an --out that cannot be written fails before the first run. A file with
    runs: refused unless `resume` (same settings; `done` lists what to skip) or `force` (moved
    aside first). Settings in NEUTRAL_SETTINGS may differ; `shard` (``"I/N"``) counts as a
    setting; `extra` adds keys.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> store = open_results(folder, {"methods": ["magnitude"]})
    >>> store.add({"accuracy": 0.9, "job": {"id": "seed 0 unstructured:magnitude @0.5", "part": 1, "parts": 1}})
    >>> open_results(folder, {"methods": ["magnitude"]}, resume=True).done()
    {'seed 0 unstructured:magnitude @0.5'}
    >>> open_results(folder, {"methods": ["random"]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.errors.PrunekitError: .../results.json holds runs of a different configuration (methods: ...
    """
    if resume and force:
        raise PrunekitError("resume continues the results in --out and force starts over: give one of them")
    out_dir = Path(out_dir)
    _check_folder(out_dir)
    path = out_dir / RESULTS_NAME
    payload = {"config": _plain(settings), **(extra or {}), "shard": shard,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__, "runs": []}
    backup = None
    if path.exists():
        stored = None if force else read_results(path)
        if stored is None:
            backup = _move_aside(path)
        elif stored["runs"]:  # a file without runs (a sweep stopped before its first) has nothing to lose
            changed = differences({**stored["config"], "shard": stored.get("shard")}, {**settings, "shard": shard})
            if changed:
                only_same = "--resume continues only the same configuration. " if resume else ""
                raise PrunekitError(f"{path} holds runs of a different configuration ({'; '.join(changed)}); nothing "
                                    f"was changed. {only_same}{_START_OVER}")
            if not resume:
                raise PrunekitError(f"{path} already holds {len(stored['runs'])} run(s) of this configuration; "
                                    f"nothing was changed. --resume continues it (skipping the finished runs); "
                                    f"{_START_OVER}")
            store = ResultsStore(path, stored)
            store.done()  # refuses runs it cannot match to jobs, before any run
            return store
    store = ResultsStore(path, payload, backup)
    store.write()
    return store
