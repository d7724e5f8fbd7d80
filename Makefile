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

# The main job: train on digits, sample, write outputs/train/.
demo: venv
	mkdir -p outputs/train
	$(BIN)/papermill nbs/train.ipynb outputs/train/train.ipynb

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

# Speed measurements (not part of `make test`); OFFICIAL=path/to/libs/uvit.py adds the official U-ViT beside ours.
bench: venv
	$(BIN)/python benchmarks/attention.py
	$(BIN)/python benchmarks/uvit_official.py $(if $(OFFICIAL),--official $(OFFICIAL))

# Every table and figure at CPU scale, and the autoguidance study: train the shared runs (finished ones skipped),
# run the result notebooks (experiments/reproduce.py NOTEBOOKS), write outputs/README.md. SEEDS=1 for a shorter pass.
SEEDS ?= 3
reproduce: venv data
	$(BIN)/python experiments/reproduce.py all --seeds $(SEEDS)

clean:
	rm -rf $(VENV) _proc _docs .pytest_cache
