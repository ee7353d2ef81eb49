"""The command line as a finished tool: version, defaults in --help, counts checked on entry,
hints for method specs, readable errors from `info`, noisy latency marked, no bars in logs."""

import argparse
import importlib.metadata
import io
import random

import pytest
import torch
from torch import nn

from prunekit.checkpoint import ArchSpec, save_checkpoint
from prunekit.cli import build_parser, main
from prunekit.errors import PrunekitError, UnknownNameError
from prunekit.methods import parse_method_spec
from prunekit.metrics import summary
from prunekit.paired_timing import paired_timing
from prunekit.report import format_table, format_transformer_table
from prunekit.training import baseline_path, default_train_config, get_baseline

COMPARE = ["compare", "--model", "lenet5", "--dataset", "mnist5k", "--methods", "magnitude", "--sparsity", "0.5"]


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"prunekit {importlib.metadata.version('prunekit')}\n"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option_blocks(help_text: str) -> dict[str, str]:
    """Each option's lines of --help (from its own line to the next option), joined by spaces."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in help_text.splitlines():
        if line.startswith("  -") and not line.startswith("   "):
            current = line.split()[0].rstrip(",")
            blocks[current] = []
        if current is not None and (line.startswith(" ") or not line.strip()):
            blocks[current].append(line.strip())
        elif not line.startswith(" "):
            current = None
    return {name: " ".join(lines) for name, lines in blocks.items()}


def test_help_of_every_subcommand_shows_every_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    checked = 0
    for name, sub in _subcommands().items():
        blocks = _option_blocks(sub.format_help())
        for action in sub._actions:
            default = action.default
            if not action.option_strings or default in (None, argparse.SUPPRESS) or default is False or default == ():
                continue
            typed = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
            block = blocks[action.option_strings[0]]
            assert f"(default: {typed})" in block, (name, action.option_strings[0], block)
            checked += 1
    assert checked >= 10
    blocks = _option_blocks(_subcommands()["compare"].format_help())
    assert "(default: 64)" in blocks["--batch-size"] and "(default: 0)" in blocks["--seeds"]
    assert "(default: 2)" in blocks["--finetune-epochs"]  # None default, explained in words
    assert blocks["--batch-size"].count("(default") == 1


@pytest.mark.parametrize("argv, option", [
    (COMPARE + ["--finetune-epochs", "-1"], "--finetune-epochs"),
    (COMPARE + ["--batch-size", "-8"], "--batch-size"),
    (COMPARE + ["--batch-size", "0"], "--batch-size"),
    (COMPARE + ["--train-epochs", "0"], "--train-epochs"),
    (COMPARE + ["--seeds", "0,-1"], "--seeds"),
    (COMPARE + ["--finetune-lr", "-0.1"], "--finetune-lr"),
    (["compare", "--model", "minilm", "--methods", "wanda", "--eval-size", "0"], "--eval-size"),
    (["sensitivity", "--model", "lenet5", "--dataset", "mnist5k", "--seed", "-2"], "--seed"),
])
def test_negative_counts_are_refused_by_argparse(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}: expected " in error and f"got '{argv[-1]}'" in error


def test_the_smallest_allowed_counts_are_accepted():
    args = build_parser().parse_args(COMPARE + ["--finetune-epochs", "0", "--batch-size", "1", "--seeds", "0,3"])
    assert (args.finetune_epochs, args.batch_size, args.seeds) == (0, 1, (0, 3))


def test_l1_without_a_granularity_hints_at_neuron_and_channel(capsys):
    with pytest.raises(UnknownNameError, match="write 'neuron:l1' or 'channel:l1'"):
        parse_method_spec("l1")
    assert main(COMPARE[:6] + ["l1", "--sparsity", "0.5"]) == 2  # refused before any training
    error = capsys.readouterr().err
    assert "unknown unstructured method 'l1'" in error and "neuron:l1" in error and "channel:l1" in error
    # a name no granularity offers keeps the plain message
    with pytest.raises(UnknownNameError) as plain:
        parse_method_spec("magnitud")
    assert "did you mean 'magnitude'" in str(plain.value) and "write" not in str(plain.value)


def _info_error(path, capsys) -> str:
    assert main(["info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("prunekit: error: ")
    assert "weights_only" not in captured.err and "weights only" not in captured.err.lower()
    return captured.err


def _checkpoint(tmp_path):
    arch = ArchSpec("lenet300", (1, 8, 8), 10)
    return save_checkpoint(tmp_path / "model.pt", arch.build(), arch)


def test_info_refuses_a_directory_with_a_readable_message(tmp_path, capsys):
    assert f"'{tmp_path}' is a directory" in _info_error(tmp_path, capsys)


def test_info_refuses_a_truncated_checkpoint(tmp_path, capsys):
    path = _checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "is truncated or damaged" in _info_error(path, capsys)


def test_info_refuses_random_bytes(tmp_path, capsys):
    path = tmp_path / "random.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    assert "was not written by torch.save (4,096 bytes" in _info_error(path, capsys)


def test_info_refuses_a_text_file(tmp_path, capsys):
    path = tmp_path / "notes.pt"
    path.write_text("accuracy 0.98\nsecond line\n")
    assert "is a text file (it starts with 'accuracy 0.98')" in _info_error(path, capsys)


def test_info_refuses_a_pickled_module_without_torch_advice(tmp_path, capsys):
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)  # a whole module: pickled code, not data
    assert "holds pickled Python objects" in _info_error(path, capsys)


def test_info_summarises_a_cached_baseline(tmp_path, capsys):
    model, meta = get_baseline("lenet300", "digits", seed=0, epochs=1, cache_dir=tmp_path, progress=False)
    path = baseline_path("lenet300", "digits", 0, 1, tmp_path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{path}: lenet300 (input (1, 8, 8), 10 classes), a cached baseline (plain weights)"
    assert f"  accuracy: {meta['accuracy']}" in out
    assert str(summary(model, torch.zeros(1, 1, 8, 8))) in out  # the same weights as the baseline


def _scripted(times: dict[str, list[float]]):
    """A fake `measure`: each model's next scripted milliseconds (models told apart by width)."""
    queues = {name: iter(values) for name, values in times.items()}

    def measure(model, inputs, repeats):
        return next(queues["dense" if model.out_features == 4 else "pruned"])

    return measure


def test_paired_timing_re_measures_until_the_ratio_is_stable():
    # the first dense round hit a busy moment; three agreeing rounds follow
    measure = _scripted({"dense": [6.0, 2.0, 2.0, 2.0, 9.0], "pruned": [1.0, 1.0, 1.0, 1.0, 9.0]})
    timing = paired_timing(nn.Linear(4, 4), nn.Linear(4, 2), None, rounds=3, max_rounds=6, measure=measure)
    assert timing.ratios == (6.0, 2.0, 2.0, 2.0) and timing.spread == 0.0 and not timing.noisy
    assert (timing.dense_ms, timing.pruned_ms, timing.speedup) == (2.0, 1.0, 2.0)


def test_paired_timing_marks_rounds_that_never_agree_as_noisy():
    measure = _scripted({"dense": [7.0, 2.44] * 4, "pruned": [1.0] * 8})
    timing = paired_timing(nn.Linear(4, 4), nn.Linear(4, 2), None, rounds=3, max_rounds=6, measure=measure)
    assert timing.ratios == (7.0, 2.44) * 3 and timing.noisy
    assert timing.spread == pytest.approx((7.0 - 2.44) / 2.44)  # last three: 2.44, 7.0, 2.44
    fields = timing.fields()
    assert (fields["latency_noisy"], fields["latency_rounds"], fields["latency_ms"]) == (True, 6, 1.0)


def test_paired_timing_refuses_bad_round_counts():
    with pytest.raises(PrunekitError, match="max_rounds >= rounds"):
        paired_timing(nn.Linear(4, 4), nn.Linear(4, 2), torch.ones(1, 4), rounds=5, max_rounds=3)


def _run(method: str, noisy: bool | None) -> dict:
    run = {"model": "lenet5", "method": method, "granularity": "channel", "scope": "global",
           "sparsity_target": 0.5, "seed": 0, "accuracy": 0.95, "accuracy_dense": 0.96,
           "sparsity_achieved": 0.5, "params_nonzero": 10, "params": 10, "macs_nonzero": 10, "macs": 10,
           "macs_dense": 40, "latency_ms": 1.0, "latency_dense_ms": 2.0}
    if noisy is not None:  # None: a run recorded before timings were judged
        run.update(latency_noisy=noisy, latency_spread=0.8 if noisy else 0.02, load_avg_1m=3.5)
    return run


def test_format_table_marks_noisy_speedups_and_explains_the_mark():
    header, rule, *lines = format_table([_run("l1", True), _run("fpgm", False), _run("taylor", None)]).splitlines()
    assert len(header) == len(rule) == len(lines[0]) == len(lines[1]) == len(lines[2])
    assert lines[0].split()[-2] == "~2.00x" and lines[1].split()[-2] == "2.00x" and lines[2].split()[-2] == "2.00x"
    assert lines[3].startswith("~ speedup: its timing rounds disagreed by up to 80%")
    assert "load average up to 3.5" in lines[3]
    assert len(format_table([_run("fpgm", False)]).splitlines()) == 3  # no note without a noisy row


def test_transformer_table_marks_a_noisy_batch():
    run = {"method": "l1", "granularity": "neuron", "scope": "layer", "pattern": None, "sparsity_target": 0.5,
           "sparsity_achieved": 0.5, "accuracy": 0.9, "nn_agreement": 0.8, "params": 80, "params_nonzero": 80,
           "prune_seconds": 1.0, "latency_ms": 10.0, "latency_dense_ms": 20.0, "latency_b1_ms": 1.0,
           "latency_dense_b1_ms": 1.5, "latency_batch_size": 32, "latency_noisy": False, "latency_spread": 0.01,
           "latency_b1_noisy": True, "latency_b1_spread": 0.5, "load_avg_1m": 2.0}
    lines = format_transformer_table([run]).splitlines()
    cells = lines[3].split()
    assert cells[cells.index("1.5") + 1] == "~1.50x" and cells[-1] == "2.00x"
    assert lines[4].startswith("~ speedup: its timing rounds disagreed by up to 50%")


def _stop_before_running(monkeypatch) -> dict:
    """Replace run_compare by one that records its config and stops the command (exit 2)."""
    seen = {}

    def fake_run_compare(config, *args, **kwargs):
        seen["config"] = config
        raise PrunekitError("stopped by the test")

    monkeypatch.setattr("prunekit.harness.run_compare", fake_run_compare)
    return seen


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_are_off_when_stderr_is_not_a_terminal(monkeypatch, capsys, tmp_path):
    seen = _stop_before_running(monkeypatch)
    argv = COMPARE + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2  # capsys: stderr is not a terminal
    assert seen["config"].progress is False
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert main(argv) == 2
    assert seen["config"].progress is True
    assert main(argv + ["--no-progress"]) == 2
    assert seen["config"].progress is False


def test_demo_says_on_its_first_run_that_it_trains_a_baseline(monkeypatch, capsys, tmp_path):
    seen = _stop_before_running(monkeypatch)
    argv = ["demo", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    first = capsys.readouterr().out
    assert "First run: " in first and "trained first" in first and "seconds on a 2-core CPU" in first
    config = seen["config"]
    path = baseline_path(config.model, config.dataset, 0, default_train_config(config.model).epochs, tmp_path)
    path.write_bytes(b"")  # the cached baseline exists now
    assert main(argv) == 2
    assert "First run" not in capsys.readouterr().out
