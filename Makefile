# Two commands do everything: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: venv demo test sync nbtest pytest data bench reproduce clean

# Create or update .venv whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

# The main job: train on digits, sample, write outputs/train/. --log-output shows the notebook's output (the
# training and sampling progress bars, a line every 2 s) in the terminal as it runs.
demo: venv
	mkdir -p outputs/train
	$(BIN)/papermill --log-output nbs/train.ipynb outputs/train/train.ipynb

data:
	tools/ensure_fashion_mnist.sh

sync: venv
	VENV=$(VENV) tools/check_sync.sh

nbtest: venv
	$(BIN)/nbdev-test --n-workers 1 --timing

pytest: venv data
	$(BIN)/python -m pytest -q

# Notebooks clean and exported, every notebook executed, then pytest (its summary line is the last line).
test: venv data sync nbtest pytest

# Speed measurements, not part of `make test` (about 14 minutes on 2 CPU cores; NO_COMPILE=1 skips torch.compile):
# outputs/bench/*.csv, *.png and summary.md (README's Performance section); QUICK=1: a 3-minute smoke run into
# outputs/bench/quick/.
# OFFICIAL=path/to/libs/uvit.py adds our U-ViT against the official one (outputs/bench/uvit_official.csv).
BENCH := $(if $(QUICK),--quick)
# online_overhead: 40 steps a phase, the first 12 (an epoch of digits: the m* cache's first visit) left out
OVERHEAD := $(if $(QUICK),--steps-per-phase 6 --csv outputs/bench/quick/online_overhead.csv,\
            --steps-per-phase 40 --skip 12)
bench: venv data
	$(BIN)/python benchmarks/train_speed.py $(BENCH) $(if $(NO_COMPILE),--no-compile)
	$(BIN)/python benchmarks/sinkhorn_speed.py $(BENCH)
	$(BIN)/python benchmarks/sampler_speed.py $(BENCH)
	$(BIN)/python benchmarks/data_speed.py $(BENCH)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/online_overhead.py --former --amortise 1,8 --label make-bench $(OVERHEAD)
	$(BIN)/python benchmarks/attention.py --no-bf16 $(if $(QUICK),--n 2)
	$(if $(OFFICIAL),$(BIN)/python benchmarks/uvit_official.py --official $(OFFICIAL))
	$(BIN)/python benchmarks/summary.py $(BENCH)

# Every table and figure at CPU scale, and the autoguidance study: train the shared runs (finished ones skipped),
# run the result notebooks (experiments/reproduce.py NOTEBOOKS), write outputs/README.md. SEEDS=1 for a shorter pass.
SEEDS ?= 3
reproduce: venv data
	$(BIN)/python experiments/reproduce.py all --seeds $(SEEDS)

clean:
	rm -rf $(VENV) _proc _docs .pytest_cache
