"""`make reproduce`: the CPU-scale training runs every figure and table needs, then every result notebook.

    python experiments/reproduce.py train [--seeds 3] [--only NAME ...] [--jobs 2]
    python experiments/reproduce.py notebooks [--seeds 3] [--only NAME ...]
    python experiments/reproduce.py all [--seeds 3]
    python experiments/reproduce.py list

Runs are shared between results (Table 1's rows are Table 2's full method, autoguidance's main models and Fig. 15's
curves). A finished run (its last checkpoint at its final step) is skipped, so the chain resumes where it stopped.
Run folders go to `runs/reproduce/<name>_s<seed>/` (not committed); the notebooks write `outputs/<result>/`.
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = Path(os.environ.get("SELFGUIDE_RUNS", ROOT / "runs" / "reproduce"))
KEEP = dict(keep_checkpoints=True)  # weaker versions (1/4, 1/2, 3/4 of the steps) for autoguidance and curves
SMALL = dict(feature_readout="patches", sk_mask=False, feature_t=0.05)  # the small-image defaults (04a_online)
PAPER = dict(feature_readout="token", sk_mask=True, feature_t=0.2)      # Algorithm 1 as written
DIGITS = dict(dataset="digits")                                          # recipe cpu16: tiny, patch 4, 1,500 steps
FASHION = dict(dataset="fashion_mnist")                                  # recipe cpu28: tiny, patch 7, 3,000 steps

# name -> (training options over the dataset's recipe, the results that read it)
RUNS = {
    "digits_none": (dict(DIGITS, guidance="none", ckpt_every=375, **KEEP), "table1 autoguidance fig15"),
    "digits_class": (dict(DIGITS, guidance="class", ckpt_every=375, **KEEP), "table1 autoguidance fig15"),
    "digits_online": (dict(DIGITS, guidance="online", ckpt_every=300, monitor_every=100, **SMALL, **KEEP),
                      "table1 autoguidance fig04 fig15 fig16"),
    "digits_nano": (dict(DIGITS, guidance="none", preset="nano"), "autoguidance"),
    "digits_online_paper": (dict(DIGITS, guidance="online", ckpt_every=300, monitor_every=100, **PAPER, **KEEP),
                            "table1 table2 fig04"),
    "digits_online_patch": (dict(DIGITS, guidance="online_patch", **SMALL), "table1 fig05"),
    "digits_offline": (dict(DIGITS, guidance="offline", init="@digits_none", feature_t=0.2,
                            feature_readout="patches"), "table1"),
    "digits_external_pca": (dict(DIGITS, guidance="external", encoder="pca"), "table1"),
    "digits_paper_no_stopgrad": (dict(DIGITS, guidance="online", **PAPER, sk_stopgrad=False), "table2"),
    "digits_paper_no_cls": (dict(DIGITS, guidance="online", **dict(PAPER, feature_readout="mean")), "table2"),
    "digits_paper_no_warmup_weight": (dict(DIGITS, guidance="online", **PAPER, sk_warmup_weight=False), "table2"),
    "digits_paper_no_mask": (dict(DIGITS, guidance="online", **dict(PAPER, sk_mask=False)), "table2"),
    "fashion_none": (dict(FASHION, guidance="none"), "table3"),
    "fashion_online": (dict(FASHION, guidance="online", **SMALL), "table3"),
    "fashion_class": (dict(FASHION, guidance="class"), "table3"),
}


def run_dir(name: str, seed: int) -> Path:
    "The folder of run `name` with seed `seed`"
    return RUNS_DIR / f"{name}_s{seed}"


def options(name: str, seed: int) -> dict:
    "Training options of run `name` under `seed` (`@other` names another run of the same seed)"
    opts = dict(RUNS[name][0], seed=seed, out_dir=str(run_dir(name, seed)))
    return {k: str(run_dir(v[1:], seed)) if isinstance(v, str) and v.startswith("@") else v for k, v in opts.items()}


def cli_args(opts: dict) -> list[str]:
    "`selfguide train` arguments for `opts`"
    out = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        out += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    return out


def finished(name: str, seed: int) -> bool:
    "Whether the run's manifest records a finished training (written after its last checkpoint)"
    m = run_dir(name, seed) / "manifest.json"
    return m.exists() and "final_loss" in json.loads(m.read_text()).get("metrics", {})


def order(names):
    "`names` with the runs they depend on (`@other`) first"
    out = []
    def visit(n):
        for v in RUNS[n][0].values():
            if isinstance(v, str) and v.startswith("@"): visit(v[1:])
        if n not in out: out.append(n)
    for n in names: visit(n)
    return out


def train_all(names, seeds, jobs: int = 1) -> None:
    "Train every missing run; `jobs` at a time, each with an equal share of the cores"
    todo = [(n, s) for s in seeds for n in order(names) if not finished(n, s)]
    print(f"reproduce: {len(todo)} runs to train ({len(names) * len(seeds) - len(todo)} finished already)", flush=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    def one(item):
        (n, s), i = item
        out = run_dir(n, s); out.mkdir(parents=True, exist_ok=True)
        t0 = time.time(); print(f"[{i + 1}/{len(todo)}] train {out.name} ...", flush=True)
        with open(out / "train.log", "w") as log:
            rc = subprocess.run([sys.executable, "-m", "selfguide", "train", *cli_args(options(n, s))],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"[{i + 1}/{len(todo)}] {out.name}: {'done' if rc == 0 else f'FAILED (exit {rc}), see {out}/train.log'}"
              f" in {(time.time() - t0) / 60:.1f} min", flush=True)
        return rc
    # a run that depends on another waits for it: dependent runs go after all runs without dependencies
    first = [x for x in todo if not any(str(v).startswith("@") for v in RUNS[x[0]][0].values())]
    later = [x for x in todo if x not in first]
    rcs = []
    for batch in (first, later):
        with ThreadPoolExecutor(jobs) as pool:
            rcs += list(pool.map(one, [(x, todo.index(x)) for x in batch]))
    if any(rcs): sys.exit(f"reproduce: {sum(r != 0 for r in rcs)} runs failed")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="reproduce", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("train", "list"))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 of every run")
    p.add_argument("--only", nargs="*", default=None, help="run names (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    a = p.parse_args(argv)
    names = a.only or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown: sys.exit(f"reproduce: unknown runs {unknown}; known: {', '.join(RUNS)}")
    if a.what == "list":
        for n in names: print(n, [("done" if finished(n, s) else "todo") for s in range(a.seeds)], RUNS[n][1])
    else: train_all(names, range(a.seeds), a.jobs)


if __name__ == "__main__":
    main()
