"""What a reproduce pass does (`experiments/reproduce.py`): which (run, seed) trains, is only recorded or only
evaluated, and why, from the ledger (`selfguide.ledger`), the run folders here and what the results need of each."""
from __future__ import annotations
import json
from pathlib import Path

from selfguide.registry import RUNS, run_folder, run_order, depends_on, is_finished
from selfguide.ledger import alike, code_rev, entry_folder, read_link, read_run, recorded_evals, run_key, stale
from selfguide.results import EVAL
from selfguide.sample import ADAPTIVE
from reproduce_notebooks import RUNS_DIR


EVALUATE_ONLY = "(a pass stopped while it evaluated)"  # the end of the reason of a run a pass only evaluates


def run_state(ledger, name: str, seed: int, folder: Path, runs=RUNS, over=None, retrained=()) -> str:
    """What a pass does with the folder of a (run, seed) it trains: 'record' (a ledger pass trained it here, with
    today's key and code, from the ledger's inits), 'resume' (the same, unfinished), else 'fresh'"""
    link = read_link(folder)
    if link is None or link["key"] != run_key(name, seed, runs, over) or link["code_rev"] not in alike(code_rev()):
        return "fresh"
    for d in depends_on(name, runs):                                  # started from the ledger's init, not retrained
        init = (read_run(entry_folder(ledger, d, seed)) or {}).get("run_id")
        if (d, seed) in retrained or link["deps"].get(d) != init: return "fresh"
    return "record" if is_finished(folder) else "resume"


def plan_runs(names, seeds, runs_dir=RUNS_DIR, runs=RUNS, ledger=None, over=None, retrain=(),
              always: dict = EVAL) -> dict:
    """{(name, seed): why it trains} of a pass, seed by seed, dependencies first. With a ledger: the runs whose entry
    is missing or stale (or in `retrain`), a fine-tuning whose init trains again, an init whose checkpoint a
    fine-tuning needs and is not here, and a run here whose evaluations a stopped pass left unfinished (it is only
    evaluated); without: the runs not finished in `runs_dir`"""
    order = [(n, s) for s in seeds for n in run_order(names, runs)]
    if ledger is None: return {x: "not finished" for x in order if not is_finished(run_folder(runs_dir, *x))}
    todo = {x: f"{x[0]}_s{x[1]}: asked for (--retrain)" if x in retrain else stale(ledger, *x, runs, over)
            for x in order}
    todo = {x: why for x, why in todo.items() if why}
    def here(n, s):                                                   # the ledger's training of (n, s), finished here
        f = run_folder(runs_dir, n, s)
        return is_finished(f) and (read_link(f) or {}).get("run_id") == (read_run(entry_folder(ledger, n, s)) or {}
                                                                           ).get("run_id")
    evaluate = {x: f"{x[0]}_s{x[1]}: {k} of its evaluations missing {EVALUATE_ONLY}" for x in order
                if x not in todo and here(*x) and (k := evals_missing(ledger, *x, run_folder(runs_dir, *x), always))}
    grew = True
    while grew:
        grew = False
        for n, s in order:
            if (n, s) not in todo and (d := next((d for d in depends_on(n, runs) if (d, s) in todo), None)):
                todo[(n, s)], grew = f"{n}_s{s}: its init {d}_s{s} trains again", True
        for n, s in list(todo):
            if run_state(ledger, n, s, run_folder(runs_dir, n, s), runs, over, todo) == "record": continue
            for d in depends_on(n, runs):
                if (d, s) not in todo and not here(d, s):
                    todo[(d, s)], grew = f"{d}_s{s}: the init of {n}_s{s}, its checkpoint is not here", True
    return {x: todo.get(x) or evaluate[x] for x in order if x in todo or x in evaluate}


def needed_evals(ledger, name: str, always: dict = EVAL) -> list[tuple[str, dict]]:
    """(checkpoint stem, settings) of what the results need of run `name`: `always` on its last checkpoint, and each
    evaluation the ledger holds of `name` at any seed (what seed 0's notebooks asked for, seeds 1 and 2 get at once)"""
    s = {**EVAL, **always}
    if s["solver"] not in ADAPTIVE: s["rtol"] = s["atol"] = None
    return [("last", s), *[x for x in recorded_evals(ledger, name) if x != ("last", s)]]


def evals_missing(ledger, name: str, seed: int, folder: Path, always: dict = EVAL) -> int:
    "How many of `needed_evals` the ledger entry of (`name`, `seed`) lacks whose checkpoint `folder` has"
    have = {(ck, json.dumps(s, sort_keys=True)) for ck, s in recorded_evals(ledger, name, seed)}
    return sum((ck, json.dumps(s, sort_keys=True)) not in have and (folder / "checkpoints" / f"{ck}.pt").exists()
               for ck, s in needed_evals(ledger, name, always))
