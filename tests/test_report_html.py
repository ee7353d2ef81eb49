"""report.html / report.md of a comparison (prunekit.report_html and the report_* modules it uses),
on hand-made runs whose numbers are known, one real tiny `prunekit compare`, and a real browser."""

import base64
import json
import re
import shutil
import statistics
import subprocess
from html.parser import HTMLParser

import pytest

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.report import aggregate
from prunekit.report_html import write_report
from prunekit.report_pareto import frontier_flags, pareto_front
from prunekit.report_rows import report_rows
from prunekit.report_words import COSINE_NOTE, comparison_words

DENSE = {"accuracy_dense": 0.978, "params_dense": 431080, "macs_dense": 2293000, "latency_dense_ms": 5.0}
LAYERS = ("conv1.weight", "conv2.weight", "fc1.weight", "classifier.weight")


def _run(granularity, method, sparsity, seed, accuracy, params, nonzero, macs_nonzero, latency_ms):
    return {"model": "lenet5", "method": method, "granularity": granularity, "scope": "layer",
            "sparsity_target": sparsity, "sparsity_achieved": sparsity, "seed": seed, "accuracy": accuracy,
            "params": params, "params_nonzero": nonzero, "macs": DENSE["macs_dense"], "macs_nonzero": macs_nonzero,
            "latency_ms": latency_ms, "layer_sparsity": {name: sparsity for name in LAYERS}, **DENSE}


def _zoo_runs():
    """Weights at 50% and 90%, neurons, channels and hybrid, two seeds each (accuracies differ by seed)."""
    runs = []
    for seed, delta in ((0, 0.001), (1, -0.001)):
        runs += [
            _run("unstructured", "magnitude", 0.5, seed, 0.974 + delta, 431080, 215540, 1146500, 5.0),
            _run("unstructured", "magnitude", 0.9, seed, 0.957 + delta, 431080, 43108, 229300, 5.0),
            _run("neuron", "taylor", 0.5, seed, 0.969 + delta, 250000, 250000, 1400000, 4.0),
            _run("channel", "l1", 0.5, seed, 0.963 + delta, 120000, 120000, 600000, 2.5),
            _run("hybrid", "l1@0.5+magnitude", 0.8, seed, 0.948 + delta, 120000, 24000, 150000, 2.6),
        ]
    return runs


class _Page(HTMLParser):
    """The tables (rows of cell texts), image sources and link / source attributes of a page."""

    def __init__(self, text):
        super().__init__()
        self.tables, self.images, self.addresses, self.scripts, self._cell = [], [], [], 0, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.addresses += [value for key, value in attrs.items() if key in ("src", "href") and value]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_report_has_one_table_row_per_aggregated_run_and_embeds_the_png_files(tmp_path):
    runs = _zoo_runs()
    html_path, md_path = write_report(tmp_path, runs, {"model": "lenet5", "seeds": [0, 1]})
    page = _Page(html_path.read_text())
    header, *rows = page.tables[0]
    assert len(rows) == len(aggregate(runs)) == 5  # report.aggregate is the reference grouping
    assert header[:3] == ["model", "method", "target"]
    weights_90 = rows[1]
    accuracy = statistics.fmean([0.958, 0.956])
    assert weights_90[:9] == ["lenet5", "unstructured:magnitude", "90%", "90.00%", "2",
                              f"{100 * accuracy:.2f}%", "0.10", "97.80%", f"{100 * (0.978 - accuracy):.2f} pt"]
    assert weights_90[10] == f"{431080 / 43108:.2f}x" and weights_90[13] == "1.00x"
    files = sorted(path.name for path in tmp_path.glob("report_*.png"))
    assert files == sorted(["report_accuracy_sparsity.png", "report_accuracy_macs.png", "report_accuracy_latency.png",
                            "report_layer_sparsity.png", "report_seeds.png"])
    embedded = sorted(base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in page.images)
    assert embedded == sorted((tmp_path / name).read_bytes() for name in files)
    markdown = md_path.read_text()
    assert all(f"]({name})" in markdown for name in files)
    assert "| lenet5 | unstructured:magnitude | 90% |" in markdown
    assert ["seeds", "[0, 1]"] in page.tables[1]  # the settings


def test_pareto_front_on_hand_made_points():
    points = {"E": (0.065, 0.948), "A": (0.1, 0.957), "D": (0.26, 0.963), "B": (0.5, 0.974), "C": (0.6, 0.969),
              "F": (0.5, 0.974), "G": (0.5, 0.970), "H": (0.7, 0.974)}
    front = dict(zip(points, pareto_front(list(points.values()))))
    # C: B is cheaper and more accurate; G: as cheap as B, less accurate; H: as accurate, dearer;
    # F equals B: neither is better, both stay
    assert front == {"E": True, "A": True, "D": True, "B": True, "C": False, "F": True, "G": False, "H": False}


def test_frontier_marks_in_the_table_follow_macs_and_latency_per_run(tmp_path):
    rows = report_rows(_zoo_runs())
    # MACs shares: 0.5, 0.1, 0.61, 0.26, 0.065; latency shares 1, 1, 0.8, 0.5, 0.52 (accuracy .974 .957 .969 .963 .948)
    assert frontier_flags(rows, "MACs") == [True, True, False, True, True]
    assert frontier_flags(rows, "latency") == [True, False, True, True, False]
    page = _Page(write_report(tmp_path, _zoo_runs())[0].read_text())
    assert [row[-1] for row in page.tables[0][1:]] == ["MACs, latency", "MACs", "latency", "MACs, latency", "MACs"]


def test_words_compare_the_families_present_with_the_measured_numbers():
    words = " ".join(comparison_words(report_rows(_zoo_runs())))
    drop_90 = f"{100 * (0.978 - statistics.fmean([0.958, 0.956])):.2f} pt"
    assert (f"Weight pruning (unstructured), best at its highest target 90%: magnitude (achieved 90.00%) reaches "
            f"95.70% (dense 97.80%), a drop of {drop_90}; {431080 / 43108:.2f}x fewer nonzero parameters (dense "
            f"tensors 1.00x smaller), {2293000 / 229300:.2f}x fewer nonzero MACs; measured speedup 1.00x "
            f"(its smallest drop: 0.40 pt, magnitude at 50%).") in words
    assert "Channel pruning (structured), best at its highest target 50%: l1" in words
    assert "measured speedup 2.00x" in words and "Hybrid pruning" in words and "Neuron pruning" in words
    assert (f"Of these, fewest nonzero parameters: hybrid ({431080 / 24000:.2f}x fewer); smallest dense tensors: "
            f"channels ({431080 / 120000:.2f}x smaller); fastest: channels (measured speedup 2.00x); most accurate: "
            f"neurons (0.90 pt drop).") in words
    assert "head" not in words.lower() and "layer pruning" not in words.lower()  # absent families: not a word
    assert COSINE_NOTE not in words


def test_minilm_runs_say_accuracy_is_the_mean_cosine_and_leave_out_what_was_not_measured(tmp_path):
    def run(granularity, method, cosine, latency):
        return {"model": "minilm", "method": method, "granularity": granularity, "scope": "layer", "pattern": None,
                "reconstruct": False, "sparsity_target": 0.5, "sparsity_achieved": 0.5, "seed": 0, "accuracy": cosine,
                "accuracy_dense": 1.0, "accuracy_metric": "mean cosine similarity", "params": 20940288,
                "params_nonzero": 20940288 if latency else 11356608, "params_dense": 22713216,
                "latency_ms": latency, "latency_dense_ms": 621.7 if latency else None}

    runs = [run("unstructured", "wanda", 0.9301, None), run("head", "l2", 0.80061, 518.1)]
    html_path, _ = write_report(tmp_path, runs)
    words = comparison_words(report_rows(runs))
    assert words[0] == COSINE_NOTE
    assert "reaches 0.8006 (dense 1.0000), a drop of 0.1994" in words[2]
    assert words[1].startswith("Weight pruning (unstructured)") and words[1].endswith("; not timed.")
    assert sorted(path.name for path in tmp_path.glob("*.png")) == ["report_accuracy_latency.png",
                                                                    "report_accuracy_sparsity.png"]
    table = _Page(html_path.read_text()).tables[0]
    assert [row[5] for row in table[1:]] == ["0.9301", "0.8006"] and table[1][11:14] == ["-", "-", "-"]


def test_chosen_run_is_drawn_and_a_wrong_name_is_refused_before_anything_is_written(tmp_path):
    html_path, _ = write_report(tmp_path / "a", _zoo_runs(), chosen="unstructured:magnitude@0.5")
    assert "Per-layer sparsity of unstructured:magnitude at 50%" in html_path.read_text()
    default = write_report(tmp_path / "b", _zoo_runs())[0].read_text()
    assert "Per-layer sparsity of unstructured:magnitude at 90%" in default  # most accurate at the highest target
    with pytest.raises(PrunekitError, match="choose one of: .*channel:l1@0.5"):
        write_report(tmp_path / "c", _zoo_runs(), chosen="magnitude@0.7")
    assert not (tmp_path / "c").exists()


def test_the_page_loads_nothing_from_a_network_and_runs_no_script(tmp_path):
    text = write_report(tmp_path, _zoo_runs(), {"note": "see https://example.org"})[0].read_text()
    page = _Page(text)
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.addresses)
    assert page.scripts == 0 and "<link" not in text and not re.search(r"url\(\s*['\"]?https?:", text)


def test_compare_writes_the_report_beside_results_json(tmp_path, capsys):
    code = main(["compare", "--model", "lenet300", "--dataset", "digits", "--methods", "magnitude,neuron:l1",
                 "--sparsity", "0.5", "--seeds", "0", "--finetune-epochs", "0", "--train-epochs", "1",
                 "--round-to", "none",
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 0
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    page = _Page((tmp_path / "out" / "report.html").read_text())
    assert [row[1] for row in page.tables[0][1:]] == ["unstructured:magnitude", "neuron:l1"]
    drop = f"{100 * (runs[0]['accuracy_dense'] - runs[0]['accuracy']):.2f} pt"
    assert drop in page.tables[0][1] and f"a drop of {drop}" in (tmp_path / "out" / "report.md").read_text()
    assert "report written to" in capsys.readouterr().out


def _chromium():
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
                None)


def test_chromium_renders_the_table_and_decodes_every_plot(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed: `apt-get install -y chromium` (Debian; `make test` installs it when "
                    "run as root) to check report.html in a real browser")
    html_path, _ = write_report(tmp_path, _zoo_runs())
    # a copy with a probe that counts decoded images once the page has loaded (the report itself has no script)
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", "<script>window.addEventListener('load', () => "
                     "document.body.setAttribute('data-decoded', Array.from(document.images).filter(image => "
                     "image.complete && image.naturalWidth > 0).length));</script></body>"))
    flags = [browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    page = _Page(dom)
    assert len(page.tables[0]) == 1 + 5 and len(page.images) == 5
    assert re.search(r'data-decoded="5"', dom), dom[:300]
    screenshot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1200,2400", html_path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from matplotlib.image import imread

    pixels = imread(screenshot)
    assert len({tuple(pixel) for pixel in pixels.reshape(-1, pixels.shape[-1])[::97]}) > 20  # plots, not a blank page
