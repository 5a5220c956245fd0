# Two commands for a new user: `make demo` (install + run the quickstart) and
# `make test` (install + lint + type-check + tests). Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest bench clean study-small study-large study-ids

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dhen-cvr quickstart --out runs/quickstart

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# Test files are spread over PYTEST_WORKERS processes (pytest-xdist), each file on one
# worker so module fixtures are built once; PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2

pytest: $(STAMP)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache

# Figure 5 / Figure 6 / SSL / sequence-encoder ablation and the GBDT yardstick on CPU
# (configs/studies/cpu_baselines.yaml), 3 seeds each. study-small: the quickstart world
# (~35 min on 2 cores); study-large: 14 days, 8000 users, DHEN+SSL with and without a
# 30-day sequence lookback window (and that with weight decay 1.0), and the GBDT (~35 min).
# Its two epochs, lr 0.0015 and piecewise-linear match counts (match_bins=8) were chosen
# on a validation day (train 1-11, evaluate day 12: 0.8065 as tiny, 0.8087 with these),
# not on the evaluation days. Finished runs are reused; results in runs/study-*/summary.md.
# WORKERS runs at once (one process each, CPU threads split among them).
WORKERS ?= 2
study-small: $(STAMP)
	test -d runs/world-small || $(BIN)/dhen-cvr synth --out runs/world-small --days 6 --users 4000 --impressions-per-day 150000 --max-seq-len 32 --seed 0
	$(BIN)/dhen-cvr study --study configs/studies/cpu_baselines.yaml --data runs/world-small --train-days 1-5 --eval-days 6 --out runs/study-small --workers $(WORKERS) --quiet

# study-ids: the quickstart world with the topic fields left out of the organic and ad
# sequences (synth --no-sequence-topics: items carry only their ids), 3 seeds (~45 min).
study-ids: $(STAMP)
	test -d runs/world-ids || $(BIN)/dhen-cvr synth --out runs/world-ids --days 6 --users 4000 --impressions-per-day 150000 --max-seq-len 32 --seed 0 --no-sequence-topics
	$(BIN)/dhen-cvr study --study configs/studies/cpu_baselines.yaml --data runs/world-ids --train-days 1-5 --eval-days 6 --out runs/study-ids --only dhen-dcn+ssl-d32-mb8 --only dhen-dcn-d32-mb8 --only dhen-dcn+ssl1-d32-mb8-ep3 --only dhen-dcn-d32-mb8-ep3 --only gbdt --workers $(WORKERS) --quiet

study-large: $(STAMP)
	test -d runs/world-large || $(BIN)/dhen-cvr synth --out runs/world-large --days 14 --users 8000 --impressions-per-day 200000 --max-seq-len 32 --seed 1
	$(BIN)/dhen-cvr study --study configs/studies/cpu_baselines.yaml --data runs/world-large --train-days 1-12 --eval-days 13-14 --out runs/study-large --set train.epochs=2 --set train.lr=0.0015 --set model.sequence.match_bins=8 --only dhen+ssl --only dhen+ssl-lookback30d --only dhen+ssl-lookback30d-wd1 --only gbdt --workers $(WORKERS) --quiet
