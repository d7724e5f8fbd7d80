"""The paper's online method from a pretrained start, as its authors run it, against its controls at one budget.

Issue 21, item 3. Per dataset and seed, every row trains the same number of steps from scratch (batch 128):

| row | what | steps |
|---|---|---|
| `init_none` | unconditional pretraining (the label-free start) | S |
| `init_class` | class-conditional pretraining (the authors' kind of start: a backbone trained with labels) | S |
| `ft_online_none` | (a) online guidance, released protocol, fine-tuned from `init_none` | S + S |
| `ft_online_class` | (b) the same from `init_class` († backbone trained with labels) | S + S |
| `cont_none` | (c) the control: unconditional training continued from `init_none` | S + S |
| `scratch_online` | (d) online guidance, released protocol, from scratch | 2 S |

S is the CPU recipe's unconditional budget (digits 1,500, Fashion-MNIST 3,000). Every row trains under the released
protocol (`--protocol released`: raw-t time embedding, output conv, learned tokens, p_drop 0.15, ...), so an init and
its fine-tuning share one architecture and one time embedding, and the rows differ only in guidance and start. One
change to the released values, for every row alike: the EMA decay keeps its warm-up (`--ema-warmup`). The released
code's constant 0.9999 over 20K guided steps leaves the EMA a time constant of half the guided phase; the CPU
recipe's 0.999 without warm-up over 750 guided steps would leave half its weight on the model at the switch. The
online rows log m*'s
NMI and the released code's codes NMI every 100 steps (on 500 images; the final NMI is over the whole training set),
and keep their checkpoint at the end of warm-up (`checkpoints/step_<N>.pt`) for `nbs/online_diagnosis.ipynb`.

Run: `.venv/bin/python experiments/pretrained_start.py [--datasets digits] [--seeds 0,1,2] [--jobs 2]`; `--render`
only writes outputs/pretrained_start/summary.md (tables, per-seed fd_cls, paired differences), comparisons.csv and
nmi.png from the committed CSVs (a pass does it when it ends).
Two runs at a time, one thread each, a run as soon as its init is there. Each finished run is scored at once (1,000
dopri5 samples, rtol 1e-3, g 0.4: fd_cls, the offline classifier-feature metric, not FID; precision, recall) and its
row written to outputs/pretrained_start/runs.csv, its NMI curve to nmi.csv, keyed by the run's options, the code's
revision of the files that train it, and the CPU. A row already there for the same key is not trained again, so a
pass stopped at any moment continues, on this machine or another, from the committed CSVs. Checkpoints stay under
--runs-dir (never committed); a fine-tuning whose init is gone retrains the init first.
"""
import argparse, csv, hashlib, json, os, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor, wait, FIRST_COMPLETED
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine                                                    # the CPU a row ran on
from selfguide.ledger import SAME_TRAINING, code_rev as _code_rev             # the code a row is keyed by

STEPS = {"digits": 1500, "fashion_mnist": 3000}
RELEASED = ["--protocol", "released", "--ema-warmup"]  # every row: the released model and protocol, EMA warm-up kept
ONLINE = ["--guidance", "online", "--monitor-every", "100", "--monitor-images", "500"]
ROWS = {  # name: (init row or None, options, steps in units of S)
    "init_none": (None, ["--guidance", "none"], 1),
    "init_class": (None, ["--guidance", "class"], 1),
    "ft_online_none": ("init_none", ONLINE, 1),
    "ft_online_class": ("init_class", ONLINE, 1),
    "cont_none": ("init_none", ["--guidance", "none"], 1),
    "scratch_online": (None, ONLINE, 2),
}
BUDGET = {"init_none": 1, "init_class": 1, "ft_online_none": 2, "ft_online_class": 2, "cont_none": 2,
          "scratch_online": 2}  # steps counted from scratch, in units of S
FIELDS = ["dataset", "row", "seed", "budget_steps", "steps", "fd_cls", "floor_fd_cls", "precision", "recall",
          "nmi_m_star", "ari_m_star", "prototypes_used", "nmi_codes_released", "train_min", "step_s", "key",
          "code_rev", "cpu"]
LOCK = threading.Lock()

def code_rev() -> str:
    "`selfguide.ledger.code_rev` of this worktree's selfguide/ (the code its `selfguide train` subprocesses run)"
    return _code_rev(ROOT / "selfguide")

def options(dataset: str, row: str, seed: int, s: int) -> list:
    "The `selfguide train` options of a row (without --init and --out-dir)"
    _, opts, units = ROWS[row]
    keep = ["--keep-checkpoints", "--ckpt-every", str(units * s // 2)] if opts is ONLINE else []  # the warm-up's end
    return ["--dataset", dataset, "--seed", str(seed), "--steps", str(units * s), *RELEASED, *opts, *keep]

def key(dataset: str, row: str, seed: int, s: int) -> str:
    "A row's key: its options and its init's (a fine-tuning depends on both)"
    init = ROWS[row][0]
    text = " ".join(options(dataset, row, seed, s)) + (f" | init {key(dataset, init, seed, s)}" if init else "")
    return hashlib.sha1(text.encode()).hexdigest()[:10]

def read(path: Path) -> list:
    if not path.exists(): return []
    with open(path) as f: return list(csv.DictReader(f))

def merge(path: Path, rows: list, fields: list, same) -> None:
    "Write `rows` into the CSV at `path`, replacing the rows `same(old, new)` says they supersede"
    with LOCK:
        old = [r for r in read(path) if not any(same(r, n) for n in rows)]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields); w.writeheader(); w.writerows(old + rows)

def train(run: Path, dataset: str, row: str, seed: int, s: int, runs_dir: Path) -> None:
    "Train one run (resuming its checkpoint if there is one) with one thread"
    init = ROWS[row][0]
    cmd = [sys.executable, "-m", "selfguide", "train", *options(dataset, row, seed, s), "--out-dir", str(run),
           *(["--init", str(runs_dir / dataset / f"{init}_s{seed}")] if init else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = run.with_suffix(".log"); run.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f: subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    print(f"trained {dataset}/{run.name} in {(time.time() - t0) / 60:.1f} min", flush=True)

def score(run: Path, dataset: str, row: str, seed: int, s: int, rev: str) -> tuple[dict, list]:
    "(the run's row, its NMI curve rows): samples scored with the offline metric, m* over the whole training set"
    import torch
    from selfguide.results import evaluate_cached
    torch.set_num_threads(1)
    m = evaluate_cached(run, n=1000, solver="dopri5", rtol=1e-3, atol=1e-3, g=0.4, seed=0)
    man = json.loads((run / "manifest.json").read_text())
    out = dict(dataset=dataset, row=row, seed=seed, budget_steps=BUDGET[row] * s, steps=man["params"]["steps"],
               fd_cls=round(m["fd_cls"], 3), floor_fd_cls=round(m["floor_fd_cls"], 3),
               precision=round(m["precision"], 3), recall=round(m["recall"], 3), nmi_m_star="", ari_m_star="",
               prototypes_used="", nmi_codes_released="", train_min=round(man["timings"]["train_s"] / 60, 2),
               step_s=round(man["timings"]["step_s_median"], 3), key=key(dataset, row, seed, s), code_rev=rev,
               cpu=machine()["cpu"])
    curve = []
    if "online" in man:
        from selfguide.train import load_run
        from selfguide.config import training_data
        from selfguide.online import assign_images, prototype_stats, m_star_bootstrap
        model, cfg = load_run(run, device="cpu")
        data = training_data(cfg.dataset, cfg.data_root, cfg.image_size)
        boot = m_star_bootstrap(model.bootstrap, model)                    # the EMA's own head where it has one
        st = prototype_stats(assign_images(boot, model, data, cfg.path, seed=cfg.seed, progress=False), cfg.clusters,
                             data.labels.numpy())
        last = man["online"]["monitor"][-1]
        out.update(nmi_m_star=round(st["nmi"], 4), ari_m_star=round(st["ari"], 4),
                   prototypes_used=st["prototypes_used"], nmi_codes_released=round(last.get("nmi_codes", 0), 4))
        curve = [dict(dataset=dataset, row=row, seed=seed, step=x["step"], nmi_m_star=round(x["nmi"], 4),
                      nmi_codes_released=round(x.get("nmi_codes", float("nan")), 4),
                      prototypes_used=x["prototypes_used"], key=out["key"], cpu=out["cpu"])
                 for x in man["online"]["monitor"]]
    return out, curve

def render(out: Path) -> Path:
    "Write out/summary.md, comparisons.csv and nmi.png from the committed runs.csv and nmi.csv (no run folder needed)"
    import pandas as pd, matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
    from selfguide.compare import pretrained_block, PRETRAINED
    from selfguide.render import markdown_table
    parts, cmps = ["# The paper's online method from a pretrained start (issue 21, item 3)",
                   "Written by `experiments/pretrained_start.py --render` from `runs.csv` and `nmi.csv` (the module's "
                   "docstring gives the rows, the budget and how a pass resumes). fd_cls is the offline "
                   "classifier-feature Frechet distance (lower is better), not FID. `key` hashes a row's options and "
                   "its init's, `code_rev` the training modules, `cpu` where it ran: the same seed on another CPU "
                   "trains a different run. Under the released protocol the EMA is frozen through warm-up, so m* is "
                   "one prototype then: by design, nothing reads it there."], []
    runs = pd.read_csv(out / "runs.csv")
    for ds in dict.fromkeys(runs.dataset):
        rows, stats, table, cmp, caption = pretrained_block(out / "runs.csv", ds)
        online = rows[rows.row.isin(["ft_online_none", "ft_online_class", "scratch_online"])]
        nmi = (online.groupby("label", sort=False)[["nmi_m_star", "prototypes_used", "nmi_codes_released"]]
               .agg(["mean", "std"]).round(3))
        nmi.columns = [f"{a} {b}" for a, b in nmi.columns]
        per_seed = rows.pivot(index="label", columns="seed", values="fd_cls").reindex(
            [PRETRAINED[r] for r in PRETRAINED if PRETRAINED[r] in set(rows.label)])
        per_seed.columns = [f"fd_cls seed {s}" for s in per_seed.columns]
        show = ["comparison", "paper", "per_seed", "mean_diff", "spread", "agree", "verdict"]
        parts += [f"## {ds}", caption, markdown_table(table), "fd_cls per seed:",
                  markdown_table(per_seed.reset_index()),
                  "m* NMI (over the whole training set), prototypes used, and the released code's logged NMI at the "
                  "end, mean and std over seeds:", markdown_table(nmi.reset_index(), ".3f"),
                  "Paired by seed (a - b in fd_cls; the paper's a is lower):", markdown_table(cmp[show])]
        cmps.append(cmp.assign(block=ds))
    curves = pd.read_csv(out / "nmi.csv")  # steps from scratch: a fine-tuning's own steps after its init's
    offset = (runs.budget_steps - runs.steps).groupby([runs.dataset, runs.row, runs.seed]).first()
    curves["step"] += [offset.get((d, r, sd), 0) for d, r, sd in zip(curves.dataset, curves.row, curves.seed)]
    fig, axs = plt.subplots(1, curves.dataset.nunique(), figsize=(6 * curves.dataset.nunique(), 3.6), squeeze=False)
    for ax, (ds, c) in zip(axs[0], curves.groupby("dataset", sort=False)):
        for (row, seed), d in c.groupby(["row", "seed"]):
            ax.plot(d.step, d.nmi_m_star, color=f"C{list(PRETRAINED).index(row)}", alpha=0.8,
                    label=PRETRAINED[row] if seed == c[c.row == row].seed.min() else None)
        ax.set(title=f"{ds}: m* NMI every 100 steps (500 images), one line per seed", ylim=(0, 1),
               xlabel="steps from scratch (a fine-tuning starts after its init's)")
        ax.legend(fontsize=7)
    fig.tight_layout(); fig.savefig(out / "nmi.png", dpi=110); plt.close(fig)
    pd.concat(cmps).to_csv(out / "comparisons.csv", index=False, float_format="%.4f")
    parts.insert(2, "![nmi](nmi.png)")
    (out / "summary.md").write_text("\n\n".join(parts) + "\n")
    return out / "summary.md"

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="digits", help="comma-separated: digits, fashion_mnist")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="S for every dataset (default: the recipe's, see STEPS)")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs/pretrained_start")
    p.add_argument("--out", type=Path, default=ROOT / "outputs/pretrained_start")
    p.add_argument("--render", action="store_true",
                   help="only write summary.md, comparisons.csv, nmi.png from the CSVs")
    a = p.parse_args(argv)
    if a.render: return print("wrote", render(a.out))
    rev, cpu = code_rev(), machine()["cpu"]
    want = [(d, r, int(sd)) for d in a.datasets.split(",") for sd in a.seeds.split(",") for r in a.rows.split(",")]
    for d, r, _ in want:
        if d not in STEPS or r not in ROWS: p.error(f"unknown dataset or row: {d} {r}")
    S = lambda d: a.steps or STEPS[d]
    done = {(r["dataset"], r["row"], int(r["seed"])) for r in read(a.out / "runs.csv")
            if r["key"] == key(r["dataset"], r["row"], int(r["seed"]), S(r["dataset"]))
            and r["code_rev"] in (rev, *SAME_TRAINING.get(rev, []))}
    todo = [w for w in want if w not in done]
    need = {(d, ROWS[r][0], sd) for d, r, sd in todo if ROWS[r][0]}         # inits whose checkpoints must exist
    run_of = lambda d, r, sd: a.runs_dir / d / f"{r}_s{sd}"
    jobs = [w for w in todo] + [n for n in need if n not in todo and not (run_of(*n) / "manifest.json").exists()]
    print(f"{len(done)} rows done (code {rev}, {cpu}); {len(jobs)} runs to train: {jobs}", flush=True)

    def job(w):
        d, r, sd = w
        run = run_of(*w)
        if not (run / "manifest.json").exists(): train(run, d, r, sd, S(d), a.runs_dir)
        if w in todo:
            row, curve = score(run, d, r, sd, S(d), rev)
            same = lambda o, n: (o["dataset"], o["row"], o["seed"]) == (n["dataset"], n["row"], str(n["seed"]))
            merge(a.out / "runs.csv", [row], FIELDS, same)
            if curve: merge(a.out / "nmi.csv", curve, list(curve[0]), same)
            print({k: row[k] for k in ("dataset", "row", "seed", "fd_cls", "nmi_m_star", "train_min")}, flush=True)
        return w

    order = lambda w: (w[0], w[2], ROWS[w[1]][0] is not None, -ROWS[w[1]][2])  # per seed: inits, then longest first
    waiting, running, finished = sorted(jobs, key=order), set(), set()
    def ready(w):                                                          # its init trained, or nothing to wait for
        init = ROWS[w[1]][0]
        return init is None or (w[0], init, w[2]) not in jobs or (w[0], init, w[2]) in finished
    with ThreadPoolExecutor(a.jobs) as pool:
        while waiting or running:
            for w in [w for w in waiting if ready(w)][:a.jobs - len(running)]:
                waiting.remove(w); running.add(pool.submit(job, w))
            if not running: raise RuntimeError(f"runs wait for inits that cannot train: {waiting}")
            done_now, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done_now: running.discard(f); finished.add(f.result())
    print("wrote", render(a.out))

if __name__ == "__main__":
    main()
