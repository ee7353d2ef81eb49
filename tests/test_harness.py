import json

import pytest

from prunekit.harness import CompareConfig, run_compare, write_results
from prunekit.report import format_table

REQUIRED = {
    "model", "dataset", "method", "granularity", "scope", "sparsity_target", "seed", "sparsity_achieved",
    "params", "params_dense", "params_nonzero", "macs", "macs_dense", "macs_nonzero", "accuracy",
    "accuracy_dense", "latency_ms", "latency_dense_ms", "batch_size", "prune_seconds", "finetune_epochs",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    config = CompareConfig("lenet300", "digits", ("magnitude", "random"), (0.5, 0.9), scope="global",
                           seeds=(0,), finetune_epochs=2, train_epochs=15, batch_size=16,
                           cache_dir=str(tmp_path_factory.mktemp("cache")), progress=False)
    return config, run_compare(config)


def test_every_run_has_the_required_fields_and_sane_values(runs):
    config, results = runs
    assert len(results) == 4
    for run in results:
        assert REQUIRED <= run.keys()
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["accuracy_dense"] <= 1.0
        # within one weight of the target over all targeted weights (global scope)
        assert abs(run["sparsity_achieved"] - run["sparsity_target"]) * run["units_targeted"] <= 0.5
        pruned = round(run["sparsity_target"] * run["units_targeted"])
        assert run["params_nonzero"] == run["params_dense"] - pruned
        assert run["macs_nonzero"] < run["macs_dense"] == run["macs"]
        assert run["latency_ms"] > 0 and run["batch_size"] == 16
        # prunekit.paired_timing: 5 to 15 rounds; noisy exactly when the last 5 rounds' ratios still disagree
        assert 5 <= run["latency_rounds"] <= 15 and run["latency_noisy"] == (run["latency_spread"] > 0.1)
        assert run["latency_rounds"] == 15 or not run["latency_noisy"]  # it stops early only when stable


def test_all_methods_start_from_the_same_baseline(runs):
    _, results = runs
    assert len({run["accuracy_dense"] for run in results}) == 1
    assert len({(run["params_dense"], run["macs_dense"]) for run in results}) == 1


def test_magnitude_beats_random_at_high_sparsity(runs):
    _, results = runs
    by_method = {run["method"]: run for run in results if run["sparsity_target"] == 0.9}
    assert by_method["magnitude"]["accuracy"] > by_method["random"]["accuracy"]


def test_structured_and_hybrid_runs_report_the_shrunk_model(tmp_path_factory):
    config = CompareConfig("lenet300", "digits", ("neuron:l1@0.5", "hybrid:l1@0.5+magnitude@0.8"), (0.9,), scope="layer",
                           seeds=(0,), finetune_epochs=0, train_epochs=2, batch_size=16,
                           cache_dir=str(tmp_path_factory.mktemp("cache")), progress=False)
    neuron, hybrid = run_compare(config)
    # lenet300 on 8x8 digits: fc1 64->300, fc2 300->100, classifier 100->10; half of fc1 and fc2 removed
    shrunk_params = (64 * 150 + 150) + (150 * 50 + 50) + (50 * 10 + 10)
    assert (neuron["granularity"], neuron["method"], neuron["sparsity_target"]) == ("neuron", "l1", 0.5)
    assert neuron["params"] == neuron["params_nonzero"] == shrunk_params < neuron["params_dense"]
    assert neuron["macs"] < neuron["macs_dense"] and neuron["shrink_record"]["steps"]
    assert (hybrid["granularity"], hybrid["method"], hybrid["sparsity_target"]) == ("hybrid", "l1@0.5+magnitude", 0.8)
    assert hybrid["params"] == shrunk_params
    weights = 64 * 150 + 150 * 50 + 50 * 10
    assert hybrid["params_nonzero"] == shrunk_params - round(0.8 * weights)


def test_results_json_round_trip_and_table(runs, tmp_path):
    config, results = runs
    path = write_results(tmp_path, config, results)
    payload = json.loads(path.read_text())
    assert payload["runs"] == json.loads(json.dumps(results))
    table = format_table(results)
    assert "magnitude" in table and "random" in table and "90%" in table


def test_head_and_layer_runs_report_the_shrunk_model_and_replay(tmp_path_factory):
    from prunekit.checkpoint import ArchSpec
    from prunekit.metrics import count_params

    config = CompareConfig("transformer-tiny", "digits", ("head:l1@0.5", "layer:removal-cost@0.5"), (), seeds=(0,),
                           finetune_epochs=0, train_epochs=1, batch_size=16,
                           cache_dir=str(tmp_path_factory.mktemp("cache")), progress=False)
    head, layer = run_compare(config)
    assert (head["granularity"], layer["granularity"]) == ("head", "layer")
    assert head["sparsity_achieved"] == 0.5 and layer["sparsity_achieved"] == 0.5  # 4 of 8 heads, 1 of 2 layers
    for run in (head, layer):
        rebuilt = ArchSpec("transformer-tiny", (1, 8, 8), 10).rebuild(run["shrink_record"])
        assert run["params"] == count_params(rebuilt)[0] < run["params_dense"]
        assert run["macs"] < run["macs_dense"]
