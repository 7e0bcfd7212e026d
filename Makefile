# clipbackdoor — every target installs what it needs on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CB_VENV := .venv-clip-benchmark
CB_STAMP := $(CB_VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
WORDNET := /usr/share/wordnet/index.sense
PG_INITDB := $(wildcard /usr/lib/postgresql/*/bin/initdb)
SUDO    := $(shell [ "$$(id -u)" -ne 0 ] && command -v sudo)

.PHONY: install system-data demo test test-slow lint format bench measurements clean

install: $(STAMP) system-data

# Python side: a venv with the pinned torch/torchvision (installed first so pip takes the local wheels),
# then the package with its dev extras.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# CLIP_benchmark, which a slow test runs on an exported checkpoint, in its own venv layered on ours (a .pth file
# adds our site-packages after its own): installed into ours, its transformers would be imported by
# open_clip in every one of our processes, about 1.5 s of CPU each.
$(CB_STAMP): $(STAMP)
	python3 -m venv $(CB_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(CB_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/clipbackdoor-venv.pth"
	$(CB_VENV)/bin/python -m pip install -q 'clip_benchmark>=1.6'
	touch $(CB_STAMP)

# Offline data from Debian: Fashion-MNIST (the embedded default) and WordNet 3.0 (EDA synonyms); and
# PostgreSQL, which the test of sweep workers sharing one Optuna study starts on loopback.
system-data:
	@if [ -f $(FMNIST) ] && [ -f $(WORDNET) ] && [ -n "$(PG_INITDB)" ]; then \
		echo "system packages present: Fashion-MNIST, WordNet, PostgreSQL"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq dataset-fashion-mnist wordnet-base wordnet-sense-index postgresql; \
	else \
		echo "No apt-get here. Put the four Fashion-MNIST IDX files (train/t10k images and labels, .gz or"; \
		echo "not) in a folder and set data.train.root / data.eval.root to it, e.g. torchvision's"; \
		echo "FashionMNIST(root, download=True) writes them to <root>/FashionMNIST/raw. WordNet 3.0 is only"; \
		echo "needed for the text augmentation (EDA). Without PostgreSQL (initdb) its sweep test is skipped."; \
	fi

demo: install
	$(VENV)/bin/clipbackdoor demo

test: install
	$(PY) -m pytest -q

test-slow: install $(CB_STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: install
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_eval.py
	[ -f runs/demo/pretrain/mmcl-ssl/checkpoints/latest.json ] || $(VENV)/bin/clipbackdoor demo
	$(PY) benchmarks/check_decode_ca.py runs/demo/pretrain/mmcl
	$(PY) benchmarks/bench_sweep.py
	$(MAKE) measurements

# The measured rates `clipbackdoor plan` ships with (package data, so an installed wheel plans with them): copies
# of the benchmark files it reads. A test fails while they differ from benchmarks/results.
measurements:
	cp benchmarks/results/data.json benchmarks/results/gpu_*.json benchmarks/results/train_scale*.json \
		src/clipbackdoor/measured/

clean:
	rm -rf runs .pytest_cache .ruff_cache
