"""`make reproduce`: the CPU-scale training runs every figure and table needs, then every result notebook.

    python experiments/reproduce.py train [--seeds 3] [--only NAME ...] [--seed S ...] [--retrain] [--jobs 2]
    python experiments/reproduce.py notebooks [--seeds 3] [--only RESULT ...]
    python experiments/reproduce.py readme
    python experiments/reproduce.py all [--seeds 3]        # train + notebooks + readme, seed by seed
    python experiments/reproduce.py list

Paper scale (GPUs; the same registry at the dataset's recipe, `selfguide.scale`), e.g. on 4 GPUs:

    python experiments/reproduce.py all --dataset imagenet100 --data-root /data/imagenet/train \
        --vae /weights/sd-vae-ft-ema --inception /weights/inception-2015-12-05.pt --runs-dir /runs/paper --seeds 1 \
        --launch "torchrun --standalone --nproc_per_node 4" [--encoder-weights /weights/dino_vits16.pth]

Runs are shared between results (Table 1's rows are Table 2's full method, autoguidance's main models, Fig. 15's
curves, and its unconditional run is what the Fig. 3 sweep clusters); the registry is `selfguide.registry.RUNS`. Run
folders go to `runs/reproduce/<name>_s<seed>/` (checkpoints, samples; never committed). What survives a change of
machine is the ledger, `outputs/ledger/` (`selfguide.ledger`): as soon as a run finishes, its entry is written (its
options and their key, the revision of the code that trains it, CPU, minutes, loss) and it is evaluated on what the
results need of it: `EVAL` on its last checkpoint, and every evaluation the ledger holds of the same run at another
seed. Which runs a pass trains, records or evaluates, and why: `reproduce_plan.py`. The result notebooks
(`reproduce_notebooks.py`) add the evaluations they ask for. `make reproduce` commits nothing: commit outputs/ as
runs finish; a pass continued from the committed outputs/, here or on another machine, trains only the runs whose
entry is missing or stale (other options, or code that does not train alike: `selfguide.ledger.SAME_TRAINING`), and
an init again where a fine-tuning needs its checkpoint and it is not here. `all` goes seed by seed and runs the
notebooks once after seed 0's runs, so that seeds 1 and 2 are evaluated on exactly what seed 0's notebooks asked
for. At paper scale the run folders are the only record (no ledger).
"""
from __future__ import annotations
import argparse, multiprocessing, os, shlex, shutil, subprocess, sys, time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments")]
import torch  # noqa: E402
from selfguide.registry import RUNS, run_folder, run_options, run_order, depends_on, is_finished  # noqa: E402
from selfguide.ledger import read_run, record_run, start_run, log_phase, pass_time, sittings  # noqa: E402
from selfguide.results import EVAL, evaluate_cached  # noqa: E402
from selfguide.scale import registry, scale_of  # noqa: E402
from selfguide.config import RECIPES  # noqa: E402
from reproduce_plan import EVALUATE_ONLY, run_state, plan_runs, needed_evals  # noqa: E402
from reproduce_notebooks import (RUNS_DIR, OUTPUTS, NOTEBOOKS, PAPER_NOTEBOOKS, PATHS, CPU_INTRO,  # noqa: E402
                                 PAPER_INTRO, notebook_command, run_notebooks, write_readme)


def cli_args(opts: dict) -> list[str]:
    "`selfguide train` arguments for `opts`"
    out = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        out += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    return out


def record_and_evaluate(ledger, name: str, seed: int, folder: Path, runs=RUNS, over=None, always: dict = EVAL,
                        tag: str = "") -> int:
    "Record the finished run in `folder` in the ledger, then evaluate it on what the results need of it; 0 if done"
    t0, needs, done = time.time(), needed_evals(ledger, name, always), 0  # before recording: an old entry's count
    try:
        record_run(ledger, name, seed, folder, runs, over)
        for stem, s in needs:
            ck = folder / "checkpoints" / f"{stem}.pt"
            if not ck.exists():
                print(f"{tag} {folder.name}: no checkpoint {ck.name}; its evaluations are left to the notebooks")
                continue
            evaluate_cached(folder, None if stem == "last" else ck, **s); done += 1
    except Exception as e:                                            # the run stays trained; the pass goes on
        print(f"{tag} {folder.name}: recording or evaluating FAILED: {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"{tag} {folder.name}: recorded in {ledger}, {done} evaluations in {(time.time() - t0) / 60:.1f} min",
          flush=True)
    return 0


def _evaluate_apart(threads: int, *args) -> int:
    "The spawned side of `evaluate_apart`"
    torch.set_num_threads(threads)
    return record_and_evaluate(*args)


def evaluate_apart(threads: int, *args) -> int:
    """`record_and_evaluate(*args)` in a spawned process with `threads` threads, so that a lane evaluates its run while
    the other lanes train (in this process, evaluations would wait for each other and leave a core idle)"""
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_evaluate_apart, threads, *args).result()
    except Exception as e:                                           # the process died: the run stays trained
        print(f"{args[-1]} {Path(args[3]).name}: evaluating FAILED: {type(e).__name__}: {e}", flush=True)
        return 1


def set_aside(folder: Path, why: str) -> None:
    "Move a run folder that is not the training the ledger needs to <folder>.stale (the one before it goes)"
    to = folder.with_name(folder.name + ".stale")
    shutil.rmtree(to, ignore_errors=True); folder.rename(to)
    print(f"  {folder.name}: moved aside to {to.name} ({why})", flush=True)


def eta(minutes: float) -> str:
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def train_all(names, seeds, jobs: int = 1, runs_dir=RUNS_DIR, runs=RUNS, launch: str | None = None, ledger=None,
              over=None, retrain=(), always: dict = EVAL, trainer=None, threads: int | None = None,
              progress=None) -> None:
    """Train every missing run (with a `ledger`: missing or stale) `jobs` at a time, each with `threads` (default an
    equal share of the cores), and record and evaluate each in the ledger as it finishes (`evaluate_apart`: in its
    lane, while the other lanes train); `launch`: e.g. torchrun;
    `over`: options over the registry's (tests: SMOKE); `trainer(options, log) -> exit code` trains one run
    (default: a subprocess); `progress(runs finished and recorded)` is called after each"""
    plan = plan_runs(names, seeds, runs_dir, runs, ledger, over, retrain, always)
    todo, jobs = list(plan), max(1, jobs)
    minutes = {x: 0.0 if plan[x].endswith(EVALUATE_ONLY) else  # no training, only its evaluations
               expected_minutes({**runs[x[0]][0], **(over or {})}, x[0], ledger) for x in todo}
    done = len(run_order(names, runs)) * len(seeds) - len(todo)
    print(f"reproduce: {len(todo)} runs to train ({done} {'current in the ledger' if ledger else 'finished'} already)"
          f", about {eta(sum(minutes.values()) / jobs)} of training at {jobs} at a time", flush=True)
    if ledger is not None and todo: print("  " + "\n  ".join(plan.values()), flush=True)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    def subprocess_trainer(opts, log):
        cmd = [*(shlex.split(launch) if launch else [sys.executable]), "-m", "selfguide", "train", *cli_args(opts)]
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    trainer, ok = trainer or subprocess_trainer, []
    def one(item):
        (n, s), i = item
        out, tag, t0, rc = run_folder(runs_dir, n, s), f"[{i + 1}/{len(todo)}]", time.time(), 0
        state = "resume" if ledger is None else run_state(ledger, n, s, out, runs, over, set(todo))
        if state == "fresh":
            if out.exists(): set_aside(out, plan[(n, s)])
            start_run(ledger, n, s, out, runs, over)
        if state != "record":
            out.mkdir(parents=True, exist_ok=True); print(f"{tag} train {out.name} ...", flush=True)
            with open(out / "train.log", "w") as log:
                rc = trainer({**run_options(n, s, runs_dir, runs), **(over or {})}, log)
            what = "done" if rc == 0 else f"FAILED (exit {rc}), see {out}/train.log"
            print(f"{tag} {out.name}: {what} in {(time.time() - t0) / 60:.1f} min", flush=True)
        if rc == 0 and ledger is not None:            # in a process of its own: the other lanes go on training
            rc = evaluate_apart(threads, ledger, n, s, out, runs, over, always, tag)
            minutes.pop((n, s))
            print(f"{tag} about {eta(sum(minutes.values()) / jobs)} of training left", flush=True)
            if rc == 0: ok.append((n, s))
            if progress: progress(len(ok))                            # runs trained and recorded (failed ones not)
        return rc
    # a run starts as soon as the runs it depends on (`@other`, same seed) have finished, seed by seed and the longest
    # first, so that no core waits behind a batch; a run whose dependency failed is not started
    deps = {x: {(d, x[1]) for d in depends_on(x[0], runs)} & set(todo) for x in todo}
    pending, running, rcs, failed = sorted(todo, key=lambda x: (x[1], -minutes[x])), {}, [], set()
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


def expected_minutes(opts: dict, name: str | None = None, ledger=None) -> float:
    """A run's training time: the mean the ledger recorded for `name` at its other seeds (this CPU's or another's),
    else its CPU recipe's on 2 idle cores (`minutes` for its steps; 0 where unknown)"""
    seen = [r["train_minutes"] for f in (sorted(Path(ledger).glob(f"{name}_s*/run.json")) if ledger and name else [])
            if (r := read_run(f.parent)) and r.get("name") == name and r.get("train_minutes")]
    if seen: return sum(seen) / len(seen)
    recipe = RECIPES.get({"digits": "cpu16", "fashion_mnist": "cpu28"}.get(opts.get("dataset"), ""), {})
    steps = opts.get("steps", recipe.get("steps", 1)) / recipe.get("steps", 1)
    return recipe.get("minutes", 0) * steps * (0.3 if opts.get("preset") == "nano" else 1)



def notebooks_phase(ledger, names, n: int, runs_dir, outputs, label: str = "", **params) -> None:
    """Run result notebooks `names` with `n` seeds; their wall time is a phase of <ledger>/sittings.csv ("notebooks,
    n seeds" + `label`), kept as "... (stopped)" where the phase is cut short (Ctrl-C)"""
    t0, ok, phase = time.time(), False, f"notebooks, {n} seed{'s' * (n > 1)}{label}"
    try: run_notebooks(names, n, runs_dir, outputs, **params); ok = True
    finally: log_phase(ledger, phase if ok else phase + " (stopped)", t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="reproduce", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("train", "notebooks", "readme", "all", "list"))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 of every run")
    p.add_argument("--only", nargs="*", default=None, help="run names (train, list) or result notebooks (notebooks)")
    p.add_argument("--seed", type=int, action="append", default=None, help="train these seeds only (repeatable)")
    p.add_argument("--retrain", action="store_true", help="train the --only runs again where the ledger is current "
                   "(their checkpoints are not here, and a result needs an evaluation the ledger lacks)")
    p.add_argument("--ledger", type=Path, default=None, help="the ledger (default <outputs>/ledger; none at paper "
                   "scale)")
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
    ledger, seeds = None if paper else a.ledger or outputs / "ledger", sorted(set(a.seed or range(a.seeds)))
    if a.what in ("notebooks", "readme"):
        names = a.only or list(known)
        unknown = [n for n in names if n not in known]
        if unknown: sys.exit(f"reproduce: unknown results {unknown}; known: {', '.join(known)}")
        if a.what == "notebooks":
            notebooks_phase(ledger, names, a.seeds, a.runs_dir, outputs, f" ({', '.join(names)})" if a.only else "",
                            **params)
        print(f"wrote {write_readme(known, outputs, intro)}")
        return
    try: runs = registry(a.dataset, a.data_root, a.vae, a.latents, a.encoder_weights)[0] if paper else RUNS
    except ValueError as e: sys.exit(f"reproduce: {e}")
    names = a.only or list(runs)
    unknown = [n for n in names if n not in runs]
    if unknown: sys.exit(f"reproduce: unknown runs {unknown}; known: {', '.join(runs)}")
    if a.retrain and (not a.only or ledger is None): p.error("--retrain takes the runs it trains again (--only) "
                                                             "and a ledger (CPU scale)")
    if a.what == "list":
        plan = plan_runs(names, seeds, a.runs_dir, runs, ledger) if ledger is not None else {}
        what = lambda x: ("evaluate" if plan[x].endswith(EVALUATE_ONLY) else "todo") if x in plan else "current"
        for n in names:
            here = ["here" if is_finished(run_folder(a.runs_dir, n, s)) else "" for s in seeds]
            state = [h or "todo" for h in here] if ledger is None else [
                "+".join(x for x in (what((n, s)), h) if x) for s, h in zip(seeds, here)]
            print(n, state, runs[n][1])
        return
    def train(s):                           # each phase's wall time goes to <ledger>/sittings.csv as it goes on
        t0, phase, done = time.time(), "train seed " + ",".join(map(str, s)), [0]
        def progress(k): done[0] = k; log_phase(ledger, phase, t0, k)
        log_phase(ledger, phase, t0)
        try: train_all(names, s, a.jobs or (1 if paper else 2), a.runs_dir, runs, a.launch, ledger,
                       retrain={(n, x) for n in names for x in s} if a.retrain else (), progress=progress)
        finally: log_phase(ledger, phase, t0, done[0])
        return done[0]
    def notebooks(n): notebooks_phase(ledger, list(known), n, a.runs_dir, outputs, **params)
    if a.what == "train" or ledger is None: train(seeds)
    else:                                   # all: seed by seed; seed 0's notebooks after its runs, while they are here
        for s in seeds:                     # seed 0's notebooks again only where its runs changed since they ran
            trained = train([s])
            if s == 0 and len(seeds) > 1 and any(is_finished(run_folder(a.runs_dir, n, 0)) for n in names) and (
                    trained or "notebooks, 1 seed" not in {r["phase"] for r in sittings(ledger)}):
                notebooks(1)
    if a.what == "all":
        notebooks(max(seeds) + 1)
        print(f"wrote {write_readme(known, outputs, intro)}")
        print(pass_time(ledger))


if __name__ == "__main__":
    main()
