"""Where Alg. 1 from scratch starts to work on digits: the [CLS] readout's m* NMI against the training budget.

Issue 21, item 5 (a measured boundary). Every row trains the paper's online method from scratch on digits (recipe
cpu16, the tiny U-ViT, batch 128) with the [CLS] readout and the timestep mask kept, and logs m*'s NMI every 100
steps (500 images); at the end m* is assigned over the whole training set (1,500 images).

| row | what | steps |
|---|---|---|
| `paper_1500` | Alg. 1 as written (`selfguide.registry.ONLINE_PAPER`: [CLS], mask, t_s 0.2), S | 1,500 |
| `paper_3000` | the same, 2 S | 3,000 |
| `paper_6000` | the same, 4 S (about 45 minutes of one core of an AMD EPYC) | 6,000 |
| `released_6000` | the released protocol (`--protocol released`, EMA warm-up kept: as pretrained_start) | 6,000 |

The question: the smallest (preset, steps) at which m* reaches NMI 0.4, or that none within an hour of this CPU
does. The tiny preset is the largest that trains here in that hour: the next one, `uvit_s` (44M parameters), takes
seconds per step. No samples are drawn (the boundary is about the assignments), so a row takes its training time.

Run: `.venv/bin/python experiments/online_boundary.py [--seeds 0,1,2] [--rows ...] [--jobs 2]`; `--render` only
writes outputs/online_boundary/summary.md and nmi.png from the committed runs.csv and nmi.csv. Rows are keyed like
experiments/pretrained_start.py (options, code revision, CPU): a committed row is not trained again.
"""
import argparse, hashlib, json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]
from pretrained_start import RELEASED, code_rev, machine, merge, read  # noqa: E402  the same keying and CSV merge
from reproduce import cli_args  # noqa: E402
from selfguide.ledger import SAME_TRAINING  # noqa: E402
from selfguide.registry import ONLINE_PAPER  # noqa: E402

TARGET = 0.4                                           # the m* NMI the boundary asks for
MONITOR = ["--monitor-every", "100", "--monitor-images", "500"]
PAPER = cli_args({k: v for k, v in ONLINE_PAPER.items() if k != "steps"})
ROWS = {  # name: (options without --seed, --steps and --out-dir, steps)
    "paper_1500": (PAPER, 1500), "paper_3000": (PAPER, 3000), "paper_6000": (PAPER, 6000),
    "released_6000": (["--dataset", "digits", *RELEASED, "--guidance", "online"], 6000)}
FIELDS = ["row", "seed", "preset", "steps", "nmi_m_star", "ari_m_star", "prototypes_used", "nmi_max_monitored",
          "first_step_at_target", "train_min", "step_s", "key", "code_rev", "cpu"]


def options(row: str, seed: int) -> list:
    opts, steps = ROWS[row]
    return [*opts, *MONITOR, "--seed", str(seed), "--steps", str(steps)]


def key(row: str, seed: int) -> str:
    return hashlib.sha1(" ".join(options(row, seed)).encode()).hexdigest()[:10]


def train(run: Path, row: str, seed: int) -> None:
    "Train one run with one thread (resuming its checkpoint if there is one)"
    cmd = [sys.executable, "-m", "selfguide", "train", *options(row, seed), "--out-dir", str(run)]
    run.parent.mkdir(parents=True, exist_ok=True); t0 = time.time()
    with open(run.with_suffix(".log"), "w") as f:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    print(f"trained {run.name} in {(time.time() - t0) / 60:.1f} min", flush=True)


def score(run: Path, row: str, seed: int, rev: str) -> tuple[dict, list]:
    "(the row: m* over the whole training set, the monitored maximum and first step at TARGET; its NMI curve)"
    import torch
    from selfguide.train import load_run
    from selfguide.config import training_data
    from selfguide.online import assign_images, prototype_stats, m_star_bootstrap
    torch.set_num_threads(1)
    man = json.loads((run / "manifest.json").read_text())
    model, cfg = load_run(run, device="cpu")
    data = training_data(cfg.dataset, cfg.data_root, cfg.image_size)
    st = prototype_stats(assign_images(m_star_bootstrap(model.bootstrap, model), model, data, cfg.path,
                                       seed=cfg.seed, progress=False), cfg.clusters, data.labels.numpy())
    mon, cpu = man["online"]["monitor"], machine()["cpu"]
    hit = [m["step"] for m in mon if m["nmi"] >= TARGET]
    out = dict(row=row, seed=seed, preset=cfg.preset, steps=cfg.steps, nmi_m_star=round(st["nmi"], 4),
               ari_m_star=round(st["ari"], 4), prototypes_used=st["prototypes_used"],
               nmi_max_monitored=round(max(m["nmi"] for m in mon), 4), first_step_at_target=hit[0] if hit else "",
               train_min=round(man["timings"]["train_s"] / 60, 2), step_s=round(man["timings"]["step_s_median"], 3),
               key=key(row, seed), code_rev=rev, cpu=cpu)
    curve = [dict(row=row, seed=seed, step=m["step"], nmi_m_star=round(m["nmi"], 4),
                  prototypes_used=m["prototypes_used"], key=out["key"], cpu=cpu) for m in mon]
    return out, curve


def render(out: Path) -> Path:
    "Write out/summary.md and nmi.png from the committed runs.csv and nmi.csv (no run folder needed)"
    import pandas as pd, matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
    from selfguide.render import markdown_table
    runs, curves = pd.read_csv(out / "runs.csv"), pd.read_csv(out / "nmi.csv")
    cols = ["nmi_m_star", "nmi_max_monitored", "prototypes_used", "train_min"]
    g = runs.groupby("row", sort=False)
    pm = lambda m, s: f"{m:.2f} ± " + ("–" if pd.isna(s) else f"{s:.2f}")           # one seed: no spread
    stats = pd.DataFrame({"row": list(g.groups), "seeds": g.seed.count().values, "steps": g.steps.first().values,
                          **{c: [pm(m, s) for m, s in zip(g[c].mean(), g[c].std())] for c in cols}})
    reached, held = runs[runs.first_step_at_target.notna()], runs[runs.nmi_m_star >= TARGET]
    where = ", ".join(f"{r.row} seed {r.seed} at step {int(r.first_step_at_target)}" for r in reached.itertuples())
    verdict = (f"m* reached NMI {TARGET} at a monitored step (every 100 steps, 500 images) in {len(reached)} of "
               f"{len(runs)} runs{f' ({where})' if where else ''}; {len(held)} held it at the end (whole training "
               "set). "
               f"The largest was {runs.nmi_max_monitored.max():.2f} monitored and {runs.nmi_m_star.max():.2f} at the "
               f"end, in runs of up to {runs.train_min.max():.0f} minutes on {', '.join(sorted(set(runs.cpu)))}, "
               "one thread each.")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (row, c) in enumerate(curves.groupby("row", sort=False)):
        for j, (seed, d) in enumerate(c.groupby("seed")):
            ax.plot(d.step, d.nmi_m_star, color=f"C{i}", alpha=0.8, label=row if j == 0 else None)
    ax.axhline(TARGET, color="k", ls="--", lw=0.8, label=f"target {TARGET}")
    ax.set(title="digits, from scratch: m* NMI every 100 steps (500 images), one line per seed", ylim=(0, 1),
           xlabel="training step"); ax.legend(fontsize=7); fig.tight_layout()
    fig.savefig(out / "nmi.png", dpi=110); plt.close(fig)
    text = ["# Alg. 1 from scratch against its budget (issue 21, item 5)",
            "Written by `experiments/online_boundary.py --render` from `runs.csv` and `nmi.csv` (the script's "
            "docstring gives the rows). Digits, recipe cpu16 (tiny U-ViT, 1.5M parameters), batch 128, from scratch; "
            "the [CLS] readout and the timestep mask kept. NMI of m* against the digit labels: at the end over the "
            "whole training set, monitored every 100 steps on 500 images; prototypes_used: the share of the K = 10 "
            "prototypes that receive an image. Mean ± std over seeds ('–' where one seed).",
            verdict, "![nmi](nmi.png)", markdown_table(stats), "Every run:",
            markdown_table(runs.assign(first_step_at_target=runs.first_step_at_target.astype("Int64"))
                           [FIELDS[:-3] + ["cpu"]].astype(object).fillna("–"))]
    (out / "summary.md").write_text("\n\n".join(text) + "\n")
    return out / "summary.md"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs/online_boundary")
    p.add_argument("--out", type=Path, default=ROOT / "outputs/online_boundary")
    p.add_argument("--render", action="store_true", help="only write summary.md and nmi.png from the CSVs")
    a = p.parse_args(argv)
    if a.render: return print("wrote", render(a.out))
    rev = code_rev()
    want = [(r, int(s)) for s in a.seeds.split(",") for r in a.rows.split(",")]
    if bad := [r for r, _ in want if r not in ROWS]: p.error(f"unknown rows {bad}; known: {', '.join(ROWS)}")
    done = {(r["row"], int(r["seed"])) for r in read(a.out / "runs.csv")
            if r["key"] == key(r["row"], int(r["seed"])) and r["code_rev"] in (rev, *SAME_TRAINING.get(rev, []))}
    todo = sorted((w for w in want if w not in done), key=lambda w: (w[1], -ROWS[w[0]][1]))  # per seed, longest first
    print(f"{len(done)} rows done (code {rev}, {machine()['cpu']}); to train: {todo}", flush=True)

    def job(w):
        run = a.runs_dir / f"{w[0]}_s{w[1]}"
        if not (run / "manifest.json").exists(): train(run, *w)
        row, curve = score(run, *w, rev)
        same = lambda o, n: (o["row"], str(o["seed"])) == (n["row"], str(n["seed"]))
        merge(a.out / "runs.csv", [row], FIELDS, same); merge(a.out / "nmi.csv", curve, list(curve[0]), same)
        print({k: row[k] for k in ("row", "seed", "nmi_m_star", "nmi_max_monitored", "train_min")}, flush=True)

    with ThreadPoolExecutor(a.jobs) as pool: list(pool.map(job, todo))
    print("wrote", render(a.out))


if __name__ == "__main__":
    main()
