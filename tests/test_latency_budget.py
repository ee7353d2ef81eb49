"""Latency budgets met by measurement, measured round_to, and the lat/MAC column.

Timings are injected (a cost model of the pruned widths), so these tests check the logic, never the
machine's speed.
"""

import copy
import math

import pytest
import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.latency_budget import meet_latency_budget, pruned_copies
from prunekit.pruner import prune
from prunekit.report import aggregate, format_table
from prunekit.widths import WidthProbe, choose_multiple, preferred_channel_multiple

INPUTS = torch.randn(4, 16)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))


def _width_timer(floor_ms: float = 0.0):
    """Fake paired timing: a fixed cost plus time proportional to the hidden widths."""
    def hidden(model: nn.Module) -> int:
        return model[0].out_features + model[2].out_features

    def timer(dense: nn.Module, pruned: nn.Module, inputs) -> tuple[float, float]:
        return floor_ms + hidden(dense), floor_ms + hidden(pruned)

    return timer


def _neuron_pruning(model: nn.Module):
    return pruned_copies(model, lambda copy_, knob: prune(copy_, "l1", knob, granularity="neuron",
                                                          example_inputs=INPUTS, remove=True))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_bisection_meets_the_ratio_at_the_smallest_knob_within_tolerance():
    model = _mlp()
    before = _state(model)
    result = meet_latency_budget(model, _neuron_pruning(model), 0.4, INPUTS, tolerance=0.005, max_steps=12,
                                 timer=_width_timer())
    # both hidden layers keep round((1 - knob) * 100) neurons: ratio <= 0.4 needs knob >= 0.595
    assert result.ratio <= 0.4 and result.model[0].out_features == result.model[2].out_features == 40
    assert 0.595 <= result.knob <= 0.595 + 0.005 + 1e-9
    assert result.measurements[0].knob == 0.95  # the floor first: is the budget reachable at all?
    assert all(m.ratio == m.pruned_ms / m.dense_ms for m in result.measurements)
    assert len(result.measurements) <= 1 + 12
    assert result.to_dict()["measurements"][0] == result.measurements[0].to_dict()
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert model[0].out_features == 100


def test_unreachable_budget_names_the_lowest_ratio_and_leaves_the_model_bit_identical():
    model = _mlp()
    before = _state(model)
    # with a fixed cost of 100 ms the floor (5 + 5 of 200 neurons) measures 110 / 300 = 0.367x
    with pytest.raises(PrunekitError, match=r"cannot be met.*0\.367x the dense latency.*ratio >= 0\.367"):
        meet_latency_budget(model, _neuron_pruning(model), 0.2, INPUTS, timer=_width_timer(100.0))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [100, 100, 10]


def test_a_prune_copy_that_returns_the_model_itself_is_refused():
    model = _mlp()
    with pytest.raises(PrunekitError, match="must prune and return a copy"):
        meet_latency_budget(model, lambda knob: model, 0.5, INPUTS, timer=_width_timer())


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 0.0}, "ratio must be a number > 0"),
    ({"ratio": float("nan")}, "ratio must be a number > 0"),
    ({"ratio": 0.5, "low": 0.9, "high": 0.5}, "need low < high"),
    ({"ratio": 0.5, "tolerance": 0}, "tolerance must be"),
    ({"ratio": 0.5, "max_steps": -1}, "max_steps must be"),
])
def test_bad_budget_arguments_fail_before_anything_is_pruned(kwargs, message):
    def never(knob):
        raise AssertionError("pruned before the arguments were checked")

    with pytest.raises(PrunekitError, match=message):
        meet_latency_budget(_mlp(), never, inputs=INPUTS, timer=_width_timer(), **kwargs)


# --- measured round_to ---------------------------------------------------------------------------


class _Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(torch.relu(self.conv1(x))))


def _blocked_timer(block: int):
    """Fake kernels that compute channels in blocks of `block`: time ~ blocks in x blocks out."""
    def cost(model: nn.Module) -> float:
        return sum(math.ceil(conv.in_channels / block) * math.ceil(conv.out_channels / block)
                   for conv in model.modules() if isinstance(conv, nn.Conv2d))

    return lambda dense, pruned, inputs: (cost(dense), cost(pruned))


def test_choose_multiple_prefers_the_fastest_per_mac_within_the_mac_band_and_ties_go_small():
    probes = [WidthProbe(None, 25, 100, 24.0, 15.0), WidthProbe(2, 25, 100, 24.0, 15.2),
              WidthProbe(4, 25, 100, 24.0, 11.0), WidthProbe(8, 25, 100, 24.0, 10.9),
              WidthProbe(16, 50, 100, 24.0, 14.0)]
    assert choose_multiple(probes) == 4  # 8 is not 3% better; 16 doubles the MACs
    assert choose_multiple(probes, tie=0.0) == 8
    assert choose_multiple(probes[:2]) is None  # rounding by 2 buys nothing


def test_preferred_multiple_matches_the_kernel_blocks_and_rounded_counts_are_multiples_of_it():
    torch.manual_seed(0)
    dense, inputs = _Cnn().eval(), torch.randn(2, 1, 8, 8)
    calls = []

    def prune_copy(round_to):
        calls.append(round_to)
        return _pruned(dense, inputs, round_to)

    cache = {}
    # 19 of 32 channels kept unrounded, 20 with round_to 2 or 4 (not timed twice), 16 with 8 or 16
    timed, blocked = [], _blocked_timer(8)

    def timer(dense_, pruned, inputs_):
        timed.append(pruned.conv1.out_channels)
        return blocked(dense_, pruned, inputs_)

    choice = preferred_channel_multiple(dense, prune_copy, inputs, timer=timer, mac_tolerance=0.3,
                                        cache=cache, cache_key="cnn")
    assert choice.round_to == 8 and calls == [None, 2, 4, 8, 16] and timed == [19, 20, 16]
    assert [probe.round_to for probe in choice.probes] == [None, 2, 4, 8, 16]
    chosen = prune_copy(choice.round_to)
    assert [chosen.conv1.out_channels % 8, chosen.conv2.out_channels % 8] == [0, 0]
    assert preferred_channel_multiple(dense, prune_copy, inputs, cache=cache, cache_key="cnn") is choice
    assert len(calls) == 6  # the cached answer measured nothing
    assert dense.conv1.out_channels == 32


def test_preferred_multiple_is_none_when_rounding_does_not_pay():
    torch.manual_seed(0)
    dense, inputs = _Cnn().eval(), torch.randn(2, 1, 8, 8)

    choice = preferred_channel_multiple(dense, lambda round_to: _pruned(dense, inputs, round_to), inputs,
                                        timer=_blocked_timer(1))
    assert choice.round_to is None


def _pruned(dense: nn.Module, inputs: torch.Tensor, round_to) -> nn.Module:
    model = copy.deepcopy(dense)
    prune(model, "l1", 0.4, granularity="channel", example_inputs=inputs, round_to=round_to, remove=True)
    return model


# --- the table column ----------------------------------------------------------------------------


def _run(seed: int, latency_ms: float) -> dict:
    return {"model": "resnet20", "method": "l1", "granularity": "channel", "scope": "global",
            "sparsity_target": 0.5, "seed": seed, "accuracy": 0.98, "accuracy_dense": 0.98,
            "sparsity_achieved": 0.5, "params_nonzero": 25, "params": 25, "macs_nonzero": 25, "macs": 25,
            "macs_dense": 100, "latency_ms": latency_ms, "latency_dense_ms": 4.0}


def test_format_table_shows_speedup_per_mac_reduction():
    runs = [_run(0, 2.0), _run(1, 1.0)]  # speedups 2x and 4x for 4x fewer MACs
    header, rule, line = format_table(runs).splitlines()
    assert header.split()[-1] == "lat/MAC" and len(rule) == len(header) == len(line)
    assert line.split()[-2:] == ["2.83x", "0.71"]  # geometric means: sqrt(8) and sqrt(0.5)
    assert aggregate(runs)[0]["latency_per_mac"] == pytest.approx(math.sqrt(0.5))


# --- the harness and the CLI ---------------------------------------------------------------------


def test_compare_rounds_channel_counts_as_asked_and_reports_latency_per_mac(tmp_path):
    from prunekit.checkpoint import ArchSpec
    from prunekit.harness import CompareConfig, run_compare

    common = dict(seeds=(0,), finetune_epochs=0, train_epochs=1, batch_size=16, cache_dir=str(tmp_path),
                  progress=False)
    fixed, = run_compare(CompareConfig("lenet5", "digits", ("channel:l1@0.5",), (), round_to=4, **common))
    auto, = run_compare(CompareConfig("lenet5", "digits", ("channel:l1@0.5",), (), **common))
    rebuilt = ArchSpec("lenet5", (1, 8, 8), 10).rebuild(fixed["shrink_record"])
    assert fixed["round_to"] == 4 and fixed["round_to_probes"] is None
    assert [rebuilt.conv1.out_channels % 4, rebuilt.conv2.out_channels % 4] == [0, 0]
    assert auto["round_to"] in (None, 2, 4, 8, 16)
    assert [probe["round_to"] for probe in auto["round_to_probes"]] == [None, 2, 4, 8, 16]
    for run in (fixed, auto):
        speedup, mac_ratio = run["latency_dense_ms"] / run["latency_ms"], run["macs_dense"] / run["macs_nonzero"]
        assert run["latency_per_mac"] == pytest.approx(speedup / mac_ratio)


def test_compare_refuses_a_bad_round_to_before_training(tmp_path):
    from prunekit.harness import CompareConfig, run_compare

    with pytest.raises(PrunekitError, match="round_to must be 'auto', None or an int >= 1"):
        run_compare(CompareConfig("lenet5", "digits", ("channel:l1@0.5",), (), round_to=0, cache_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())  # no baseline was trained


def test_cli_round_to_accepts_auto_none_and_numbers(capsys):
    from prunekit.cli import build_parser, main

    base = ["compare", "--model", "lenet5", "--dataset", "digits", "--methods", "channel:l1", "--sparsity", "0.5"]
    parse = build_parser().parse_args
    assert [parse(base + extra).round_to for extra in ([], ["--round-to", "none"], ["--round-to", "8"])] == [
        "auto", None, 8]
    with pytest.raises(SystemExit):
        main(base + ["--round-to", "0"])
    assert "expected 'auto', 'none' or an integer >= 1" in capsys.readouterr().err
