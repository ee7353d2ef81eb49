"""Every ```python block of the README runs, in order, in one namespace, and prints what it says.

A block whose first line is ``# file: NAME`` is written to NAME (importable) instead of run.
"""

import contextlib
import io
import re
import sys
from pathlib import Path

from invariants import one_thread  # noqa: F401 (autouse: one thread for this module)

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def test_readme_examples_run_and_print_what_they_claim(tmp_path, monkeypatch):
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 4, "the README lost its examples"
    monkeypatch.setenv("PRUNEKIT_CACHE", str(ROOT / ".prunekit-cache"))  # baselines are shared with the CLI
    monkeypatch.chdir(tmp_path)  # files the examples save land here
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {"__name__": "readme"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for index, block in enumerate(blocks):
            first_line = block.splitlines()[0]
            if first_line.startswith("# file: "):
                (tmp_path / first_line.removeprefix("# file: ").strip()).write_text(block)
                continue
            exec(compile(block, f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    out = printed.getvalue()
    assert "SparsityReport(target=0.9, achieved=0.9)" in out
    assert "row 50% [2]" in out  # wanda at 2:4 keeps 2 of every 4 consecutive inputs
    assert "{'units': 16, 'params': 256, 'nonzero': 256} ['neuron:l1 50%', 'unstructured:magnitude 80%']" in out
    assert "Linear(in_features=784, out_features=150, bias=True) Linear(in_features=150, out_features=50" in out
    assert re.search(r"accuracy 9\d\.\d\d%", out), out
    assert (tmp_path / "small.pt").is_file()
    assert "bit-identical: True" in out and re.search(r"onnxruntime vs torch: \d+e[-+]\d\d, 95% zeros", out), out
    sys.modules.pop("mymodels", None)
