# `make demo` and `make test` both create .venv when it is missing and install the pinned
# dependencies; the stamp file makes re-runs skip the install until requirements change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean chromium compiler

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# --resume: a second `make demo` prints the finished runs again instead of refusing runs/demo
demo: $(STAMP)
	$(BIN)/prunekit demo --resume

test: $(STAMP) chromium compiler
	$(BIN)/python -m pytest

# the browser tests/test_report_html.py renders report.html in (Debian's chromium); installed when
# missing and apt-get is usable as root, else that test skips and says how to install it
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& export DEBIAN_FRONTEND=noninteractive && { apt-get install -y -q chromium \
		|| { apt-get update -q && apt-get install -y -q chromium; }; }; } \
		|| echo "chromium not installed (needs root and apt-get): the browser check of tests/test_report_html.py will skip"

# g++ builds prunekit's compiled sparse kernel (prunekit.deploy.native_kernel) on first use; installed
# when missing and apt-get is usable as root, else the kernel is left out and tests/test_native_kernel.py
# says why
compiler:
	@command -v g++ >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& export DEBIAN_FRONTEND=noninteractive && { apt-get install -y -q g++ \
		|| { apt-get update -q && apt-get install -y -q g++; }; }; } \
		|| echo "g++ not installed (needs root and apt-get): prunekit's compiled sparse kernel is left out"

clean:
	rm -rf $(VENV) .prunekit-cache
