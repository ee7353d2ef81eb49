from prunekit.report import benchmark_markdown, format_table


def _run(model: str, method: str, seed: int, accuracy: float) -> dict:
    return {"model": model, "method": method, "granularity": "unstructured", "scope": "global",
            "sparsity_target": 0.9, "seed": seed, "accuracy": accuracy, "accuracy_dense": 0.96,
            "sparsity_achieved": 0.9, "params_nonzero": 10, "params": 100, "macs_nonzero": 10, "macs": 100,
            "macs_dense": 100, "latency_ms": 1.0, "latency_dense_ms": 2.0}


def test_format_table_has_a_model_column_wide_enough_for_every_model():
    runs = [_run("lenet300", "magnitude", 0, 0.95), _run("lenet300", "magnitude", 1, 0.93),
            _run("transformer-tiny", "magnitude", 0, 0.80)]
    header, rule, *lines = format_table(runs).splitlines()
    assert header.startswith("model             method")  # longest name + 2 spaces
    assert len(rule) == len(header) == len(lines[0]) == len(lines[1])
    assert [line.split()[:2] for line in lines] == [["lenet300", "magnitude"], ["transformer-tiny", "magnitude"]]
    assert lines[0].split()[5] == "94.00"  # mean accuracy over the two seeds of one model only


def test_benchmark_markdown_exact_page():
    text = benchmark_markdown(
        "Pruning on MNIST",
        ["Command: `python bench.py`.", "Mean over seeds."],
        ["model  acc\nm1     90.0", "model  acc\nm2     80.0"],
        [("m1 accuracy >= 85", True, "90.0 %"), ("m2 accuracy >= 85", False, "80.0 %")],
    )
    assert text == (
        "# Pruning on MNIST\n"
        "\n"
        "Command: `python bench.py`.\n"
        "\n"
        "Mean over seeds.\n"
        "\n"
        "```\n"
        "model  acc\nm1     90.0\n"
        "\n"
        "model  acc\nm2     80.0\n"
        "```\n"
        "\n"
        "| check | result | value |\n"
        "|---|---|---|\n"
        "| m1 accuracy >= 85 | PASS | 90.0 % |\n"
        "| m2 accuracy >= 85 | FAIL | 80.0 % |\n"
    )


def test_benchmark_markdown_leaves_out_empty_sections():
    assert benchmark_markdown("Title", ["Intro."], [], []) == "# Title\n\nIntro.\n"
