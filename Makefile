# Two commands do everything: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: venv demo test sync tree-record nbtest pytest data bench reproduce clean

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

# Tests write their temporary files (runs, checkpoints, pytest's tmp_path) under a fresh TMPDIR that is removed
# afterwards, pass or fail: the notebooks' tempfile.mkdtemp() folders would otherwise stay behind (~0.5 GB a run).
IN_TMP = d=$$(mktemp -d) && TMPDIR=$$d
END_TMP = ; rc=$$?; rm -rf $$d; exit $$rc
nbtest: venv
	$(IN_TMP) $(BIN)/nbdev-test --n-workers 1 --timing $(END_TMP)

pytest: venv data
	$(IN_TMP) $(BIN)/python -m pytest -q $(END_TMP)

# Notebooks clean and exported, every notebook executed, then pytest (its summary line is the last line), and the
# working tree as the notebooks and tests found it (tools/tree_state.py: silent unless something changed).
TREE_RECORD := $(VENV)/.tree-before-test
tree-record: venv
	$(BIN)/python tools/tree_state.py save $(TREE_RECORD)

test: venv data sync tree-record nbtest pytest
	@$(BIN)/python tools/tree_state.py check $(TREE_RECORD)

# Speed measurements, not part of `make test` (about 35 minutes on 2 CPU cores; NO_COMPILE=1 skips torch.compile):
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
	$(BIN)/python benchmarks/classifier_speed.py $(BENCH)
	$(BIN)/python benchmarks/cpu_limit.py $(BENCH) $(if $(NO_COMPILE),--no-compile)
	$(if $(OFFICIAL),$(BIN)/python benchmarks/uvit_official.py --official $(OFFICIAL))
	$(BIN)/python benchmarks/summary.py $(BENCH)

# Every table and figure at CPU scale, and the autoguidance study: train the shared runs seed by seed, recording
# each in the ledger (outputs/ledger/) with its evaluations as it finishes, run the result notebooks (after seed 0's
# runs, and at the end; experiments/reproduce_notebooks.py NOTEBOOKS), write outputs/README.md. It commits nothing:
# commit outputs/ as runs finish; run again (here or on another machine) and it trains only the runs whose ledger
# entry is missing or stale. SEEDS=1 for a shorter pass.
SEEDS ?= 3
reproduce: venv data
	$(BIN)/python experiments/reproduce.py all --seeds $(SEEDS)

clean:
	rm -rf $(VENV) _proc _docs .pytest_cache

# One prepared GPU check, about 7 minutes on one H100 (benchmarks/gpu_check.py; README "GPU"): throughput and MFU of
# U-ViT-L/2, ours against the official U-ViT, syncs inside the step, the CLI end to end (torchrun, SIGKILL, resume,
# sample). Rows in outputs/bench/gpu/ (OUT=DIR elsewhere, e.g. OUT=$OUT on a lent machine); DEVICE=cpu QUICK=1: the
# tiny preset (tests/test_gpu_check.py runs it). No venv prerequisite: on a GPU machine its own python3 runs it.
# `make gpu-wheels` (here, where pip works) fills the ignored .gpu-wheels/ that the GPU machine lacks: the diffusers
# wheel, and with UVIT_GIT=a clone of github.com/baofff/U-ViT (bare or not) its libs/uvit.py and libs/timm.py.
.PHONY: gpu-check gpu-wheels
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_WHEELS := .gpu-wheels
DIFFUSERS_VERSION ?= 0.42.1
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --device $(or $(DEVICE),cuda) $(if $(QUICK),--quick) \
	  $(if $(OUT),--out $(OUT)) $(if $(OFFICIAL),--official $(OFFICIAL))

gpu-wheels:
	mkdir -p $(GPU_WHEELS)/official
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d $(GPU_WHEELS) diffusers==$(DIFFUSERS_VERSION)
	$(if $(UVIT_GIT),git -C $(UVIT_GIT) show HEAD:libs/uvit.py >$(GPU_WHEELS)/official/uvit.py,\
	  @echo "gpu-wheels: no UVIT_GIT=PATH (a clone of baofff/U-ViT): the check will skip the official U-ViT")
	$(if $(UVIT_GIT),git -C $(UVIT_GIT) show HEAD:libs/timm.py >$(GPU_WHEELS)/official/timm.py)
	du -sh $(GPU_WHEELS)
