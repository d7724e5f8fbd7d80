"""`make reproduce`: the CPU-scale training runs every figure and table needs, then every result notebook.

    python experiments/reproduce.py train [--seeds 3] [--only NAME ...] [--jobs 2]
    python experiments/reproduce.py notebooks [--seeds 3] [--only RESULT ...]
    python experiments/reproduce.py readme
    python experiments/reproduce.py all [--seeds 3]        # train + notebooks + readme
    python experiments/reproduce.py list

Runs are shared between results (Table 1's rows are Table 2's full method, autoguidance's main models, Fig. 15's
curves, and its unconditional run is what the Fig. 3 sweep clusters); the registry is `selfguide.results.RUNS`.
A finished run (its manifest written after its last checkpoint) is skipped, so the chain resumes where it stopped.
Run folders go to `runs/reproduce/<name>_s<seed>/` (not committed); each notebook writes `outputs/<result>/` (PNG,
CSV, summary.md, the executed notebook), and its evaluations are cached in the run folders (`evals/`), so two
results needing the same cell sample once.
"""
from __future__ import annotations
import argparse, os, re, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from selfguide.results import RUNS, run_folder, run_options, run_order, is_finished  # noqa: E402

RUNS_DIR = Path(os.environ.get("SELFGUIDE_RUNS", ROOT / "runs" / "reproduce"))
OUTPUTS = ROOT / "outputs"
NOTEBOOKS = ("table1_guidance", "table2_ablations", "table3_datasets", "sweep_nmi_ari", "fig04_training",
             "fig05_query", "fig07_nfe", "fig11_guidance", "fig16_clusters", "fig19_trajectory", "autoguidance")


def cli_args(opts: dict) -> list[str]:
    "`selfguide train` arguments for `opts`"
    out = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        out += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    return out


def todo_runs(names, seeds, runs_dir=RUNS_DIR, runs=RUNS) -> list[tuple[str, int]]:
    "(name, seed) of the runs still to train, dependencies first"
    return [(n, s) for s in seeds for n in run_order(names, runs) if not is_finished(run_folder(runs_dir, n, s))]


def train_all(names, seeds, jobs: int = 1, runs_dir=RUNS_DIR, runs=RUNS) -> None:
    "Train every missing run; `jobs` at a time, each with an equal share of the cores"
    todo = todo_runs(names, seeds, runs_dir, runs)
    done = len(names) * len(seeds) - len(todo)
    print(f"reproduce: {len(todo)} runs to train ({done} finished already)", flush=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    def one(item):
        (n, s), i = item
        out = run_folder(runs_dir, n, s); out.mkdir(parents=True, exist_ok=True)
        t0 = time.time(); print(f"[{i + 1}/{len(todo)}] train {out.name} ...", flush=True)
        cmd = [sys.executable, "-m", "selfguide", "train", *cli_args(run_options(n, s, runs_dir, runs))]
        with open(out / "train.log", "w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        what = "done" if rc == 0 else f"FAILED (exit {rc}), see {out}/train.log"
        print(f"[{i + 1}/{len(todo)}] {out.name}: {what} in {(time.time() - t0) / 60:.1f} min", flush=True)
        return rc
    # a run that depends on another waits for it: dependent runs go after all runs without dependencies
    first = [x for x in todo if not any(str(v).startswith("@") for v in runs[x[0]][0].values())]
    later = [x for x in todo if x not in first]
    rcs = []
    for batch in (first, later):
        with ThreadPoolExecutor(jobs) as pool:
            rcs += list(pool.map(one, [(x, todo.index(x)) for x in batch]))
    if any(rcs): sys.exit(f"reproduce: {sum(r != 0 for r in rcs)} runs failed")


def notebook_command(name: str, seeds: int, runs_dir=RUNS_DIR, outputs=OUTPUTS) -> list[str]:
    "The papermill command that runs result notebook `name` into outputs/<name>/<name>.ipynb"
    return [sys.executable, "-m", "papermill", str(ROOT / "nbs" / f"{name}.ipynb"),
            str(outputs / name / f"{name}.ipynb"), "-p", "runs_dir", str(runs_dir), "-p", "seeds", str(seeds),
            "-p", "out_dir", str(outputs / name), "--cwd", str(ROOT)]


def run_notebooks(names, seeds: int, runs_dir=RUNS_DIR, outputs=OUTPUTS) -> None:
    "Execute each result notebook with papermill, with progress in the terminal"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    env.pop("IN_TEST", None)
    failed = []
    for i, name in enumerate(names):
        (outputs / name).mkdir(parents=True, exist_ok=True)
        t0 = time.time(); print(f"[{i + 1}/{len(names)}] {name} ...", flush=True)
        with open(outputs / name / "papermill.log", "w") as log:
            rc = subprocess.run(notebook_command(name, seeds, runs_dir, outputs), cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT).returncode
        if rc: failed.append(name)
        what = "done" if rc == 0 else f"FAILED (exit {rc}), see outputs/{name}/papermill.log"
        print(f"[{i + 1}/{len(names)}] {name}: {what} in {(time.time() - t0) / 60:.1f} min", flush=True)
    if failed: sys.exit(f"reproduce: notebooks failed: {', '.join(failed)}")


def write_readme(names=NOTEBOOKS, outputs=OUTPUTS) -> Path:
    "outputs/README.md from each result's summary.md (image links made relative to outputs/)"
    parts = ["# Results at CPU scale, beside the paper's\n\nWritten by `python experiments/reproduce.py readme` from "
             "each result's `summary.md` (`make reproduce` runs the whole chain). Our quality metric is `fd_cls`, a "
             "Frechet distance in a small classifier's features, not FID; the paper's numbers are FID/IS on ImageNet "
             "and LSUN. Table cells are mean ± std (ddof 1) over the seeds that finished."]
    for name in names:
        f = outputs / name / "summary.md"
        if not f.exists():
            parts.append(f"## {name}\n\nNot run yet (`python experiments/reproduce.py notebooks --only {name}`).")
            continue
        text = re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m: f"]({name}/{m.group(1)})", f.read_text().strip())
        parts.append(text + f"\n\n(notebook: [{name}/{name}.ipynb]({name}/{name}.ipynb))")
    path = outputs / "README.md"; path.write_text("\n\n".join(parts) + "\n")
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="reproduce", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("train", "notebooks", "readme", "all", "list"))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 of every run")
    p.add_argument("--only", nargs="*", default=None, help="run names (train, list) or result notebooks (notebooks)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    a = p.parse_args(argv)
    if a.what in ("notebooks", "readme"):
        names = a.only or list(NOTEBOOKS)
        unknown = [n for n in names if n not in NOTEBOOKS]
        if unknown: sys.exit(f"reproduce: unknown results {unknown}; known: {', '.join(NOTEBOOKS)}")
        if a.what == "notebooks": run_notebooks(names, a.seeds)
        print(f"wrote {write_readme()}")
        return
    names = a.only or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown: sys.exit(f"reproduce: unknown runs {unknown}; known: {', '.join(RUNS)}")
    if a.what == "list":
        for n in names:
            state = ["done" if is_finished(run_folder(RUNS_DIR, n, s)) else "todo" for s in range(a.seeds)]
            print(n, state, RUNS[n][1])
        return
    train_all(names, range(a.seeds), a.jobs)
    if a.what == "all":
        run_notebooks(list(NOTEBOOKS), a.seeds)
        print(f"wrote {write_readme()}")


if __name__ == "__main__":
    main()
