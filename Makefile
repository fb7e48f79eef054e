# Two commands for a fresh machine: `make demo` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST ?= /usr/share/datasets/fashion-mnist
# PyTorch pinned for CI and this machine (the wheels lie on its disk); pyproject leaves it open for users.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install data espeak browser test demo benchmark clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

# Fashion-MNIST from the Debian package when it is missing (needs apt; elsewhere set DIFFMIA_FASHION_MNIST).
data:
	@if [ ! -f "$(FMNIST)/train-images-idx3-ubyte.gz" ] && [ -z "$$DIFFMIA_FASHION_MNIST" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST missing: put the IDX .gz files in a folder and set DIFFMIA_FASHION_MNIST"; exit 1; \
	  fi; \
	fi

# espeak-ng for the audio corpus (diffmia audio-corpus, tests/test_audio_corpus.py), from the Debian package when it
# is missing; a failed apt install fails here; without apt the audio tests skip and this says how to install it.
espeak:
	@if ! command -v espeak-ng >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing espeak-ng (Debian package espeak-ng) for the audio corpus"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng; \
	  else \
	    echo "espeak-ng missing and no apt-get: install espeak-ng (https://github.com/espeak-ng/espeak-ng) to build the audio corpus; its tests will skip"; \
	  fi; \
	fi

# Chromium for the HTML report's headless-browser test (tests/test_report_html.py), from the Debian package when it
# is missing; without apt (or if the install fails) that one test skips, so this never fails `make test`.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Chromium (Debian package chromium) for the HTML report's browser test"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      || echo "Chromium could not be installed: the HTML report's browser test will skip"; \
	  else \
	    echo "Chromium missing and no apt-get: the HTML report's browser test will skip (install chromium to run it)"; \
	  fi; \
	fi

test: install data espeak browser
	$(PY) -m pytest -q -n 2

demo: install data
	$(VENV)/bin/diffmia demo --out runs/demo

benchmark: install data
	$(PY) benchmarks/run_benchmark.py

clean:
	rm -rf runs .pytest_cache
