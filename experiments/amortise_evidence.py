"""Does amortising m* change what online guidance learns? Digits, the CPU recipe, exact (amortise 1) against cached m*.

Run: `.venv/bin/python experiments/amortise_evidence.py [--runs-dir runs/amortise] [--jobs 2] [--only RUNS]` (about
80 min on 2 CPU cores). Trains, two at a time with one thread each: the small-image defaults (all patch tokens, no
mask, t_s 0.05; the SK rows come from the EMA pass: with amortise, its refreshed rows and the bank's) with amortise 1
and 4, seeds 0, 1 and 2 (and 2, seed 0); the same with `sk_features=online` (the SK loss has a pass of its own over
every row, so amortise changes only m*) with 1 and 4, seeds 0 and 1; and the paper's settings ([CLS], mask, t_s 0.2;
SK rows tapped) with amortise 1 and 8, seed 0. `--only small:4:0,...` recomputes those runs and keeps the csv's other
rows. Then it scores 1,000 samples of each (dopri5, rtol 1e-3, g 0.4) with the offline metric (`fd_cls`, a Frechet
distance in a small classifier's features, not FID). Writes outputs/amortise/evidence.csv: per run the setting,
amortise, seed, fd_cls, NMI/ARI of the prototypes against the labels, prototypes used, final SK loss, the median
step time (the two jobs share the machine: a rough figure; benchmarks/online_overhead.py measures speed) and the CPU.
"""
import argparse, csv, json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine                                                  # the CPU a row ran on
SETTINGS = {"small": [], "small_online": ["--sk-features", "online"],
            "paper": ["--feature-readout", "token", "--sk-mask", "--feature-t", "0.2"]}
RUNS = [("small", 1, 0), ("small", 4, 0), ("small_online", 1, 0), ("small_online", 4, 0),  # (setting, amortise, seed)
        ("paper", 1, 0), ("paper", 8, 0), ("small_online", 1, 1), ("small_online", 4, 1),
        ("small", 1, 1), ("small", 4, 1), ("small", 1, 2), ("small", 4, 2), ("small", 2, 0)]

def train(runs_dir: Path, setting: str, r: int, seed: int) -> Path:
    out = runs_dir / f"{setting}_a{r}_s{seed}"
    if (out / "manifest.json").exists(): return out
    cmd = [sys.executable, "-m", "selfguide", "train", "--dataset", "digits", "--guidance", "online", "--amortise",
           str(r), "--seed", str(seed), "--out-dir", str(out), *SETTINGS[setting]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.time(); subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    print(f"trained {out.name} in {(time.time() - t0) / 60:.1f} min", flush=True)
    return out

def row(run: Path, setting: str, r: int, seed: int) -> dict:
    import torch
    from selfguide.results import evaluate_cached
    torch.set_num_threads(2)
    m = evaluate_cached(run, n=1000, solver="dopri5", rtol=1e-3, atol=1e-3, g=0.4, seed=0)
    man = json.loads((run / "manifest.json").read_text())
    met = man["metrics"]
    return dict(setting=setting, amortise=r, seed=seed, fd_cls=round(m["fd_cls"], 3), nmi=round(met.get("nmi", 0), 3),
                ari=round(met.get("ari", 0), 3), prototypes_used=met["prototypes_used"],
                final_sk_loss=round(met["final_sk_loss"], 4), step_s=round(man["timings"]["step_s_median"], 3),
                cpu=machine()["cpu"])                               # a seed trains another run on another CPU

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs/amortise")
    p.add_argument("--out", type=Path, default=ROOT / "outputs/amortise/evidence.csv")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", default="", help="runs to redo as setting:amortise:seed,...; the csv keeps the rest")
    a = p.parse_args(argv)
    only = [(n, int(r), int(s)) for n, r, s in (x.split(":") for x in a.only.split(",") if x)]
    if bad := [o for o in only if o not in RUNS]: p.error(f"unknown runs {bad}; known: {RUNS}")
    todo = only or RUNS
    with ThreadPoolExecutor(a.jobs) as pool:
        runs = list(pool.map(lambda s: train(a.runs_dir, *s), todo))
    new = {spec: row(run, *spec) for run, spec in zip(runs, todo)}
    old = {}
    if only and a.out.exists():
        with open(a.out) as f: old = {(r["setting"], int(r["amortise"]), int(r["seed"])): r for r in csv.DictReader(f)}
    rows = [new.get(spec, old.get(spec)) for spec in RUNS if spec in new or spec in old]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(next(iter(new.values())))); w.writeheader(); w.writerows(rows)
    for r in new.values(): print(r)
    print(f"wrote {a.out}")

if __name__ == "__main__":
    main()
