"""`make reproduce`: the CPU-scale training runs every figure and table needs, then every result notebook.

    python experiments/reproduce.py train [--seeds 3] [--only NAME ...] [--jobs 2]
    python experiments/reproduce.py notebooks [--seeds 3] [--only RESULT ...]
    python experiments/reproduce.py readme
    python experiments/reproduce.py all [--seeds 3]        # train + notebooks + readme
    python experiments/reproduce.py list

Paper scale (GPUs; the same registry at the dataset's recipe, `selfguide.scale`), e.g. on 4 GPUs:

    python experiments/reproduce.py all --dataset imagenet100 --data-root /data/imagenet/train \
        --vae /weights/sd-vae-ft-ema --inception /weights/inception-2015-12-05.pt --runs-dir /runs/paper --seeds 1 \
        --launch "torchrun --standalone --nproc_per_node 4" [--encoder-weights /weights/dino_vits16.pth]

Runs are shared between results (Table 1's rows are Table 2's full method, autoguidance's main models, Fig. 15's
curves, and its unconditional run is what the Fig. 3 sweep clusters); the registry is `selfguide.results.RUNS`.
A finished run (its manifest written after its last checkpoint) is skipped, so the chain resumes where it stopped.
Run folders go to `runs/reproduce/<name>_s<seed>/` (not committed); each notebook writes `outputs/<result>/` (PNG,
CSV, summary.md, the executed notebook), and its evaluations are cached in the run folders (`evals/`), so two
results needing the same cell sample once.
"""
from __future__ import annotations
import argparse, os, re, shlex, subprocess, sys, time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from selfguide.results import RUNS, run_folder, run_options, run_order, is_finished  # noqa: E402
from selfguide.scale import registry, scale_of  # noqa: E402
from selfguide.config import RECIPES  # noqa: E402

RUNS_DIR = Path(os.environ.get("SELFGUIDE_RUNS", ROOT / "runs" / "reproduce"))
OUTPUTS = ROOT / "outputs"
NOTEBOOKS = ("table1_guidance", "table2_ablations", "table3_datasets", "sweep_nmi_ari", "fig04_training",
             "fig05_query", "fig07_nfe", "fig11_guidance", "fig16_clusters", "fig19_trajectory", "autoguidance")
# at paper scale: the results written in roles (sweep_nmi_ari takes an official checkpoint by its own parameters,
# autoguidance is beside the paper)
PAPER_NOTEBOOKS = ("table1_guidance", "table2_ablations", "table3_datasets", "fig04_training", "fig05_query",
                   "fig07_nfe", "fig11_guidance", "fig16_clusters", "fig19_trajectory")
PATHS = ("data_root", "latents", "vae", "encoder_weights", "inception", "reference_stats")  # notebook parameters


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


def train_all(names, seeds, jobs: int = 1, runs_dir=RUNS_DIR, runs=RUNS, launch: str | None = None) -> None:
    "Train every missing run; `jobs` at a time, each with an equal share of the cores; `launch`: e.g. torchrun ..."
    todo = todo_runs(names, seeds, runs_dir, runs)
    done = len(names) * len(seeds) - len(todo)
    print(f"reproduce: {len(todo)} runs to train ({done} finished already)", flush=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    def one(item):
        (n, s), i = item
        out = run_folder(runs_dir, n, s); out.mkdir(parents=True, exist_ok=True)
        t0 = time.time(); print(f"[{i + 1}/{len(todo)}] train {out.name} ...", flush=True)
        cmd = [*(shlex.split(launch) if launch else [sys.executable]), "-m", "selfguide", "train",
               *cli_args(run_options(n, s, runs_dir, runs))]
        with open(out / "train.log", "w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        what = "done" if rc == 0 else f"FAILED (exit {rc}), see {out}/train.log"
        print(f"[{i + 1}/{len(todo)}] {out.name}: {what} in {(time.time() - t0) / 60:.1f} min", flush=True)
        return rc
    # a run starts as soon as the runs it depends on (`@other`, same seed) have finished, the longest first, so that
    # no core waits behind a batch; a run whose dependency failed is not started
    deps = {x: {(v[1:], x[1]) for v in runs[x[0]][0].values() if str(v).startswith("@")} & set(todo) for x in todo}
    pending, running, rcs, failed = sorted(todo, key=lambda x: -expected_minutes(runs[x[0]][0])), {}, [], set()
    with ThreadPoolExecutor(jobs) as pool:
        while pending or running:
            for x in [x for x in pending if deps[x] & failed]:
                pending.remove(x); failed.add(x); rcs.append(1)
                print(f"[{todo.index(x) + 1}/{len(todo)}] {x[0]}_s{x[1]}: not started, a run it needs failed",
                      flush=True)
            for x in [x for x in pending if not deps[x] & (set(pending) | set(running.values()))][:jobs - len(running)]:
                pending.remove(x); running[pool.submit(one, (x, todo.index(x)))] = x
            if not running: continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                x = running.pop(f); rcs.append(f.result())
                if rcs[-1]: failed.add(x)
    if any(rcs): sys.exit(f"reproduce: {sum(r != 0 for r in rcs)} runs failed")


def expected_minutes(opts: dict) -> float:
    "A run's training time on 2 idle cores from its CPU recipe (`minutes`; 0 where unknown): the longest start first"
    recipe = RECIPES.get({"digits": "cpu16", "fashion_mnist": "cpu28"}.get(opts.get("dataset"), ""), {})
    return recipe.get("minutes", 0) * (0.3 if opts.get("preset") == "nano" else 1)


def notebook_command(name: str, seeds: int, runs_dir=RUNS_DIR, outputs=OUTPUTS, **params) -> list[str]:
    "The papermill command that runs result notebook `name` into outputs/<name>/<name>.ipynb (`params`: more -p)"
    extra = [x for k, v in params.items() if v is not None for x in ("-p", k, str(v))]
    return [sys.executable, "-m", "papermill", str(ROOT / "nbs" / f"{name}.ipynb"),
            str(outputs / name / f"{name}.ipynb"), "-p", "runs_dir", str(runs_dir), "-p", "seeds", str(seeds),
            "-p", "out_dir", str(outputs / name), *extra, "--cwd", str(ROOT)]


def run_notebooks(names, seeds: int, runs_dir=RUNS_DIR, outputs=OUTPUTS, **params) -> None:
    "Execute each result notebook with papermill, with progress in the terminal"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    env.pop("IN_TEST", None)
    failed = []
    for i, name in enumerate(names):
        (outputs / name).mkdir(parents=True, exist_ok=True)
        t0 = time.time(); print(f"[{i + 1}/{len(names)}] {name} ...", flush=True)
        with open(outputs / name / "papermill.log", "w") as log:
            rc = subprocess.run(notebook_command(name, seeds, runs_dir, outputs, **params), cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT).returncode
        if rc: failed.append(name)
        what = "done" if rc == 0 else f"FAILED (exit {rc}), see outputs/{name}/papermill.log"
        print(f"[{i + 1}/{len(names)}] {name}: {what} in {(time.time() - t0) / 60:.1f} min", flush=True)
    if failed: sys.exit(f"reproduce: notebooks failed: {', '.join(failed)}")


CPU_INTRO = ("# Results at CPU scale, beside the paper's\n\nWritten by `python experiments/reproduce.py readme` from "
             "each result's `summary.md` (`make reproduce` runs the whole chain). Our quality metric is `fd_cls`, a "
             "Frechet distance in a small classifier's features, not FID; the paper's numbers are FID/IS on ImageNet "
             "and LSUN. Table cells are mean ± std (ddof 1) over the seeds that finished.")
PAPER_INTRO = ("# Results at paper scale, beside the paper's\n\nWritten by `python experiments/reproduce.py readme "
               "--dataset ...` from each result's `summary.md`; the quality column is Inception's FID where the "
               "notebooks were given Inception weights.")


def write_readme(names=NOTEBOOKS, outputs=OUTPUTS, intro: str = CPU_INTRO) -> Path:
    "<outputs>/README.md from each result's summary.md (image links made relative to it)"
    parts = [intro]
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
    p.add_argument("--jobs", type=int, default=None, help="runs trained at once (default 2 on CPU, 1 at paper scale)")
    p.add_argument("--dataset", default=None, help="a paper dataset (imagenet100, imagenet256, lsun_churches): "
                   "its runs and notebooks at paper scale (default: the CPU-scale registry)")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where the run folders go")
    p.add_argument("--outputs", type=Path, default=None, help="where results go (default outputs/, or "
                   "outputs/paper/<dataset>/ at paper scale)")
    p.add_argument("--launch", default=None, help='launcher of each training run, e.g. "torchrun --standalone '
                   '--nproc_per_node 4" (default: this Python)')
    for k in PATHS: p.add_argument("--" + k.replace("_", "-"), default=None, help=f"paper scale: {k} (notebooks)")
    a = p.parse_args(argv)
    paper = a.dataset is not None
    if paper:
        try: scale = scale_of(a.dataset)
        except ValueError as e: p.error(str(e))
        if scale != "paper": p.error(f"--dataset takes a paper dataset; {a.dataset} is CPU scale (leave it out)")
    known = PAPER_NOTEBOOKS if paper else NOTEBOOKS
    outputs = a.outputs or (OUTPUTS / "paper" / a.dataset if paper else OUTPUTS)
    params = dict(dataset=a.dataset, **{k: getattr(a, k) for k in PATHS}) if paper else {}
    intro = PAPER_INTRO if paper else CPU_INTRO
    if a.what in ("notebooks", "readme"):
        names = a.only or list(known)
        unknown = [n for n in names if n not in known]
        if unknown: sys.exit(f"reproduce: unknown results {unknown}; known: {', '.join(known)}")
        if a.what == "notebooks": run_notebooks(names, a.seeds, a.runs_dir, outputs, **params)
        print(f"wrote {write_readme(known, outputs, intro)}")
        return
    try: runs = registry(a.dataset, a.data_root, a.vae, a.latents, a.encoder_weights)[0] if paper else RUNS
    except ValueError as e: sys.exit(f"reproduce: {e}")
    names = a.only or list(runs)
    unknown = [n for n in names if n not in runs]
    if unknown: sys.exit(f"reproduce: unknown runs {unknown}; known: {', '.join(runs)}")
    if a.what == "list":
        for n in names:
            state = ["done" if is_finished(run_folder(a.runs_dir, n, s)) else "todo" for s in range(a.seeds)]
            print(n, state, runs[n][1])
        return
    train_all(names, range(a.seeds), a.jobs or (1 if paper else 2), a.runs_dir, runs, a.launch)
    if a.what == "all":
        run_notebooks(list(known), a.seeds, a.runs_dir, outputs, **params)
        print(f"wrote {write_readme(known, outputs, intro)}")


if __name__ == "__main__":
    main()
