"""Join the ``results.json`` of the shards of one sweep (``prunekit merge``).

Every file must come from the same configuration (apart from the shard and NEUTRAL_SETTINGS),
and no job may appear in two files (the same shard given twice, or a shard beside the whole
sweep): both are refused naming the files. The merged runs are in run order, as one unsharded
sweep would have written them; each keeps the ``shard`` it ran in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.results_store import RESULTS_NAME, differences, read_results

#: keys of a results file that describe the sweep rather than one shard's run of it
_SWEEP_KEYS = ("config", "accuracy_metric")


def _results_path(source: str | os.PathLike) -> Path:
    path = Path(source)
    path = path / RESULTS_NAME if path.is_dir() else path
    if not path.is_file():
        raise PrunekitError(f"{source}: no {RESULTS_NAME} there; give the --out folders (or results files) of the "
                            "shards to merge")
    return path


def _job_key(run: dict, path: Path) -> tuple[int, int, str]:
    job = run.get("job")
    if not isinstance(job, dict) or not {"id", "index", "part"} <= job.keys():
        raise PrunekitError(f"{path} holds runs without a job id (written by an older prunekit); they cannot be "
                            "matched across shards: run that sweep again to merge it")
    return job["index"], job["part"], job["id"]


def missing_shards(shards: Sequence[str | None]) -> list[str]:
    """The shards ``I/N`` of a sweep split N ways that are not among `shards`.

    >>> missing_shards(["1/3", "3/3"])
    ['2/3']
    """
    counts = {int(shard.split("/")[1]) for shard in shards if shard}
    return [f"{number}/{count}" for count in sorted(counts) for number in range(1, count + 1)
            if f"{number}/{count}" not in shards]


def merge_results(sources: Sequence[str | os.PathLike]) -> dict:
    """One results payload from the files (or --out folders) of a sweep's shards.

    >>> import tempfile
    >>> from prunekit.results_store import open_results
    >>> folders = [tempfile.mkdtemp(), tempfile.mkdtemp()]
    >>> for number, folder in enumerate(folders, 1):
    ...     store = open_results(folder, {"methods": ["magnitude"]}, shard=f"{number}/2")
    ...     store.add({"job": {"id": f"job {number}", "index": number - 1, "part": 1, "parts": 1}})
    >>> [run["shard"] for run in merge_results(folders)["runs"]]
    ['1/2', '2/2']
    """
    if not sources:
        raise PrunekitError("nothing to merge: give the --out folders of the shards")
    paths = [_results_path(source) for source in sources]
    payloads = [read_results(path) for path in paths]
    first = payloads[0]
    owner: dict[tuple[int, int], Path] = {}
    runs = []
    for path, payload in zip(paths, payloads):
        changed = differences(first["config"], payload["config"])
        if changed:
            raise PrunekitError(f"{path} is from a different configuration than {paths[0]} ({'; '.join(changed)}); "
                                "only shards of one sweep can be merged")
        for run in payload["runs"]:
            index, part, job_id = _job_key(run, path)
            if (index, part) in owner:
                raise PrunekitError(f"run '{job_id}' is in both {owner[index, part]} and {path}: a shard given twice, "
                                    "or a shard beside the whole sweep? Merge each shard once")
            owner[index, part] = path
            runs.append(run)
    runs.sort(key=lambda run: (run["job"]["index"], run["job"]["part"]))
    shards = sorted({payload.get("shard") for payload in payloads}, key=str)
    return {**{key: first[key] for key in _SWEEP_KEYS if key in first}, "shard": None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "merged_from": [str(path) for path in paths],
            "shards": shards, "shards_missing": missing_shards(shards), "runs": runs}
