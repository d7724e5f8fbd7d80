"""The ledger (`outputs/ledger/`): a reproduce pass that survives a change of machine. Tiny SMOKE runs trained in this
process (`train_all`'s `trainer`), a temporary ledger, tiny evaluations: `make reproduce` without its subprocesses."""
import importlib.util, json, shutil, subprocess, sys
from pathlib import Path
import pytest, torch
from selfguide import ledger as L
from selfguide.registry import run_folder
from selfguide.results import (SMOKE, RunsDir, NotHere, evaluate_cached, evaluate_checkpoints, finished_runs,
                               seed_rows)
from selfguide.train import train

ROOT = Path(__file__).resolve().parents[1]

def _load(name):
    "The script experiments/<name>.py as module `name` (registered: its evaluations run in spawned processes)"
    if name in sys.modules: return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    m = sys.modules[name] = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m

reproduce = _load("reproduce")
RUNS = {"none": (dict(dataset="digits", guidance="none", keep_checkpoints=True), "t1"),
        "cls": (dict(dataset="digits", guidance="class"), "t1")}
QUICK = dict(n=16, solver="euler", steps=2)  # this pass's EVAL: what every run is evaluated on at once
ROWS = {"unconditional": "none", "class guidance": "cls"}

def in_process(opts, log):
    "A `train_all` trainer: the run trained in this process (no subprocess: fast)"
    train(**opts)
    return 0

def never(opts, log): raise AssertionError(f"trained {opts['out_dir']} again")

def a_pass(runs_dir, ledger, seeds=(0,), runs=RUNS, trainer=in_process):
    reproduce.train_all(list(RUNS), list(seeds), 1, runs_dir, runs, ledger=ledger, over=SMOKE, always=QUICK,
                        trainer=trainer, threads=1)

def plan(runs_dir, ledger, runs=RUNS, **kw):
    return reproduce.plan_runs(list(RUNS), [0, 1], runs_dir, runs, ledger, SMOKE, always=QUICK, **kw)

def stems(entry): return sorted(f.name for f in (entry / "evals").iterdir())

@pytest.fixture(scope="module")
def passed(tmp_path_factory):
    "Two runs x 2 seeds, seed by seed: seed 0's runs, what a notebook asks of seed 0 besides, then seed 1's runs"
    tmp = tmp_path_factory.mktemp("pass")
    runs, lg = tmp / "runs", tmp / "ledger"
    a_pass(runs, lg, seeds=[0])
    none0 = finished_runs(RunsDir(runs, lg, RUNS, SMOKE), "none", [0])[0]
    evaluate_cached(none0, **{**QUICK, "g": 1.0}); evaluate_checkpoints(none0, **QUICK)  # a notebook's g, kept steps
    a_pass(runs, lg, seeds=[1])
    return runs, lg

def test_each_run_is_recorded_and_evaluated_at_once_on_what_seed_0_was_asked_for(passed):
    runs, lg = passed
    assert stems(lg / "none_s1") == stems(lg / "none_s0") == ["last_euler_k2_g0.4_n16_s0_b500.json",
        "last_euler_k2_g1_n16_s0_b500.json", "step_2_euler_k2_g0.4_n16_s0_b500.json"]
    assert stems(lg / "cls_s0") == stems(lg / "cls_s1") == ["last_euler_k2_g0.4_n16_s0_b500.json"]
    run = L.read_run(lg / "none_s1")
    assert (run["code_rev"], run["cpu"], run["torch"]) == (L.code_rev(), L.cpu_model(), torch.__version__)
    assert run["checkpoints"] == {"2": "step_2.pt", "4": "last.pt"} and run["final_loss"] > 0
    assert run["train_minutes"] >= 0 and run["deps"] == {}
    assert run["options"] == dict(RUNS["none"][0], seed=1, **SMOKE) and run["key"] == L.run_key("none", 1, RUNS, SMOKE)
    m = json.loads((lg / "none_s1" / "evals" / "last_euler_k2_g1_n16_s0_b500.json").read_text())
    assert (m["run_key"], m["code_rev"], m["run_id"]) == (run["key"], run["code_rev"], run["run_id"])
    assert {p.name for p in (lg / "none_s1").iterdir()} == {"run.json", "manifest.json", "loss.csv", "evals"}
    assert not [p for p in lg.rglob("*") if p.suffix in (".pt", ".npz")]           # small artefacts only

def test_on_another_machine_nothing_trains_again_and_the_rows_are_the_same(passed, tmp_path):
    runs, lg = passed
    before = seed_rows(RunsDir(runs, lg, RUNS, SMOKE), ROWS, [0, 1], **QUICK)
    lg2 = shutil.copytree(lg, tmp_path / "ledger")                    # the committed ledger; no run folder here
    a_pass(tmp_path / "runs", lg2, seeds=[0, 1], trainer=never)
    rd = RunsDir(tmp_path / "runs", lg2, RUNS, SMOKE)
    assert finished_runs(rd, "none", [0, 1]) == {0: lg2 / "none_s0", 1: lg2 / "none_s1"}
    assert len(before) == 4 and seed_rows(rd, ROWS, [0, 1], **QUICK) == before
    assert [r["step"] for r in evaluate_checkpoints(lg2 / "none_s1", **QUICK)] == [2, 4]
    with pytest.raises(NotHere) as e: evaluate_cached(lg2 / "cls_s1", **{**QUICK, "g": 2.0})  # asked of no seed yet
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("cls seed 1: evaluation last_euler_k2_g2_n16_s0_b500 is not in the ledger")
    assert str(e.value).endswith("train it again: python experiments/reproduce.py train --only cls --seed 1 --retrain")

def test_a_change_of_options_or_of_training_code_makes_exactly_that_run_stale(passed, tmp_path, monkeypatch):
    runs, lg = passed
    lg = shutil.copytree(lg, tmp_path / "ledger")
    assert plan(runs, lg) == {}
    p = plan(runs, lg, {**RUNS, "cls": (dict(RUNS["cls"][0], lr=5e-4), "t1")})
    assert list(p) == [("cls", 0), ("cls", 1)] and p[("cls", 0)].startswith("cls_s0: its options changed (key ")
    run = L.read_run(lg / "none_s1")
    (lg / "none_s1" / "run.json").write_text(json.dumps(dict(run, code_rev="0123456789")))  # trained by other code
    p = plan(runs, lg)
    assert list(p) == [("none", 1)] and p[("none", 1)].startswith("none_s1: trained by code 0123456789, now ")
    monkeypatch.setitem(L.SAME_TRAINING, L.code_rev(), ["0123456789"])      # reviewed to train alike: current
    assert plan(runs, lg) == {}
    monkeypatch.setattr(L, "code_rev", lambda src=None: "fedcba9876")      # a training module changed: every run
    assert len(plan(runs, lg)) == 4

class Stop(Exception): pass

def test_a_pass_stopped_between_two_runs_and_continued_elsewhere_trains_only_the_missing_one(tmp_path):
    lg, calls = tmp_path / "ledger", []
    def stops_at_the_second(opts, log):
        calls.append(Path(opts["out_dir"]).name)
        if len(calls) == 2: raise Stop("the sitting ended")
        return in_process(opts, log)
    with pytest.raises(Stop): a_pass(tmp_path / "runs", lg, trainer=stops_at_the_second)
    assert calls == ["none_s0", "cls_s0"] and L.current(lg, "none", 0, RUNS, SMOKE)
    assert L.read_run(lg / "cls_s0") is None
    again = []
    a_pass(tmp_path / "elsewhere", lg, trainer=lambda o, log: again.append(Path(o["out_dir"]).name) or
           in_process(o, log))
    assert again == ["cls_s0"] and L.current(lg, "cls", 0, RUNS, SMOKE)

def test_a_pass_stopped_while_it_evaluated_evaluates_the_rest_and_trains_nothing(passed):
    runs, lg = passed
    gone = lg / "none_s1" / "evals" / "last_euler_k2_g1_n16_s0_b500.json"       # seed 0's notebook asked for it
    kept = gone.read_text(); gone.unlink()                                     # the sitting ended before it
    assert plan(runs, lg) == {
        ("none", 1): "none_s1: 1 of its evaluations missing (a pass stopped while it evaluated)"}
    a_pass(runs, lg, seeds=[0, 1], trainer=never)                              # evaluated again, not trained
    assert json.loads(gone.read_text()) == json.loads(kept) and plan(runs, lg) == {}

def _finished(folder):
    "A finished run folder as training leaves it, untrained (plans read notes and manifests, not weights)"
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(dict(step=4), folder / "checkpoints" / "last.pt")
    (folder / "manifest.json").write_text(json.dumps(dict(metrics=dict(final_loss=0.5), timings=dict(train_s=6.0))))

def test_a_fine_tuning_needs_its_init_here_unless_it_only_awaits_its_record(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["reproduce_plan"], "evals_missing", lambda *a: 0)  # unevaluated fakes: not asked
    fake = {"base": (dict(dataset="digits", guidance="none"), ""),
            "child": (dict(dataset="digits", guidance="offline", init="@base"), "")}
    runs, lg = tmp_path / "runs", tmp_path / "ledger"
    for n in fake:
        L.start_run(lg, n, 0, run_folder(runs, n, 0), fake); _finished(run_folder(runs, n, 0))
        L.record_run(lg, n, 0, run_folder(runs, n, 0), fake)
    plan = lambda **kw: reproduce.plan_runs(list(fake), [0], runs, fake, lg, **kw)
    assert plan() == {}
    assert plan(retrain={("base", 0)}) == {("base", 0): "base_s0: asked for (--retrain)",
                                           ("child", 0): "child_s0: its init base_s0 trains again"}
    shutil.rmtree(lg / "child_s0"); shutil.rmtree(runs / "base_s0")    # child trained here, its record not written
    assert list(plan()) == [("child", 0)]                                # recorded from its folder: no init needed
    assert reproduce.run_state(lg, "child", 0, run_folder(runs, "child", 0), fake) == "record"
    shutil.rmtree(runs / "child_s0")                                     # now it trains: its init must be here
    assert plan() == {("base", 0): "base_s0: the init of child_s0, its checkpoint is not here",
                      ("child", 0): f"child_s0: not in the ledger {lg}"}

def test_a_notebook_whose_checkpoint_is_not_here_keeps_its_committed_outputs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out" / "fig05_query"
    out.mkdir(parents=True); (out / "summary.md").write_text("committed")
    def stops(cmd, stdout=None, **kw):                                   # papermill, stopped by a checkpoint gone
        (out / "summary.md").write_text("half"); (out / "new.png").write_bytes(b"x")
        stdout.write("\x1b[0;31mNotHere\x1b[0m: digits_online seed 0: evaluation last_dopri5_tol0.001_g0.4_n1000_s0_"
                     "b500 is not in the ledger (outputs/ledger/digits_online_s0) and the checkpoint is not here\n")
        return subprocess.CompletedProcess(cmd, 1)
    monkeypatch.setattr(subprocess, "run", stops)
    reproduce.run_notebooks(["fig05_query"], 1, tmp_path / "runs", tmp_path / "out")  # no SystemExit
    assert (out / "summary.md").read_text() == "committed" and not (out / "new.png").exists()
    assert ("fig05_query: kept its committed outputs: a checkpoint it reads is not here (digits_online seed 0: "
            "evaluation last_dopri5") in capsys.readouterr().out

def test_pretrained_start_keys_its_rows_with_the_same_code_rev():
    ps = _load("pretrained_start")
    assert ps.code_rev() == L.code_rev() and ps.SAME_TRAINING is L.SAME_TRAINING


def test_all_runs_seed_0s_notebooks_once_and_logs_each_phase_of_a_sitting(tmp_path, monkeypatch):
    import csv
    calls, trained = [], {0: 1}                          # runs each seed trains in this sitting (train_all's progress)
    def fake_train_all(names, seeds, *a, progress=None, **k):
        calls.append(("train", tuple(seeds)))
        if trained.get(seeds[0]): progress(trained[seeds[0]])
    monkeypatch.setattr(reproduce, "train_all", fake_train_all)
    monkeypatch.setattr(reproduce, "run_notebooks", lambda names, n, *a, **k: calls.append(("notebooks", n)))
    monkeypatch.setattr(reproduce, "write_readme", lambda *a, **k: tmp_path / "README.md")
    monkeypatch.setattr(reproduce, "is_finished", lambda folder: True)
    led, args = tmp_path / "ledger", ["all", "--seeds", "2", "--outputs", str(tmp_path), "--runs-dir", str(tmp_path)]
    reproduce.main(args)
    assert calls == [("train", (0,)), ("notebooks", 1), ("train", (1,)), ("notebooks", 2)], calls
    rows = list(csv.DictReader((led / "sittings.csv").open()))
    assert [(r["phase"], r["runs"]) for r in rows] == [("train seed 0", "1"), ("notebooks, 1 seed", "0"),
                                                      ("train seed 1", "0"), ("notebooks, 2 seeds", "0")], rows
    calls.clear(); trained.clear()                       # the next sitting: seed 0 current, its notebooks have run
    reproduce.main(args)
    assert calls == [("train", (0,)), ("train", (1,)), ("notebooks", 2)], calls
    assert "of which seed 0's training and its notebooks" in reproduce.pass_time(led)
    reproduce.main(["notebooks", "--seeds", "2", "--only", "autoguidance", *args[3:]])  # the notebooks alone, too
    assert calls[-1] == ("notebooks", 2), calls
    assert list(csv.DictReader((led / "sittings.csv").open()))[-1]["phase"] == "notebooks, 2 seeds (autoguidance)"
