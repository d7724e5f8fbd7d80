"""Result plumbing: the run registry, finished-run skipping, CLI and papermill arguments, the README from summaries."""
import importlib.util, json, subprocess, sys
from pathlib import Path
import pandas as pd, pytest
from selfguide.results import run_order, run_options, over_seeds, pm, write_summary, paper_table, finished_runs

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce", ROOT / "experiments" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec); spec.loader.exec_module(reproduce)

FAKE = {"base": (dict(guidance="none", steps=3, keep_checkpoints=True), "t1"),
        "child": (dict(guidance="offline", init="@base", sk_mask=False), "t1"),
        "other": (dict(guidance="class"), "t2")}

def _finish(folder):
    folder.mkdir(parents=True); (folder / "manifest.json").write_text(json.dumps(dict(metrics=dict(final_loss=0.1))))

def test_dependencies_come_first_and_name_the_same_seed(tmp_path):
    assert run_order(["child", "other"], FAKE) == ["base", "child", "other"]
    assert run_options("child", 1, tmp_path, FAKE)["init"] == str(tmp_path / "base_s1")
    with pytest.raises(KeyError, match="unknown run"): run_order(["nope"], FAKE)

def test_cli_args_spell_booleans_and_values():
    args = reproduce.cli_args(run_options("child", 0, "/r", FAKE))
    assert args[:2] == ["--guidance", "offline"] and "--no-sk-mask" in args and ["--init", "/r/base_s0"] == args[2:4]
    assert "--keep-checkpoints" in reproduce.cli_args(FAKE["base"][0])

def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    _finish(tmp_path / "base_s0"); (tmp_path / "child_s0").mkdir()     # child s0 started, not finished
    assert list(reproduce.plan_runs(["child"], [0, 1], tmp_path, FAKE)) == [("child", 0), ("base", 1), ("child", 1)]
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    reproduce.train_all(["child"], [0], jobs=1, runs_dir=tmp_path, runs=FAKE)
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "selfguide", "train"] and str(tmp_path / "child_s0") in calls[0]
    assert list(finished_runs(tmp_path, "base", [0, 1])) == [0]

def test_notebooks_get_runs_dir_seeds_and_their_output_folder(tmp_path, monkeypatch, capsys):
    cmds = []
    monkeypatch.setattr(reproduce.subprocess, "run",
                        lambda cmd, **kw: cmds.append((cmd, kw)) or subprocess.CompletedProcess(cmd, 0))
    reproduce.run_notebooks(["table1_guidance", "fig07_nfe"], 2, tmp_path / "runs", tmp_path / "out")
    cmd, kw = cmds[0]
    assert cmd[1:3] == ["-m", "papermill"]
    assert cmd[4] == str(tmp_path / "out" / "table1_guidance" / "table1_guidance.ipynb")
    assert ["-p", "runs_dir", str(tmp_path / "runs")] == cmd[5:8] and ["-p", "seeds", "2"] == cmd[8:11]
    assert "IN_TEST" not in kw["env"]
    assert "[2/2] fig07_nfe ..." in capsys.readouterr().out
    assert all((ROOT / "nbs" / f"{n}.ipynb").exists() for n in reproduce.NOTEBOOKS)

def test_every_result_notebook_takes_runs_dir_seeds_and_out_dir():
    for n in reproduce.NOTEBOOKS:
        cells = json.loads((ROOT / "nbs" / f"{n}.ipynb").read_text())["cells"]
        params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, n
        names = {line.split("=")[0].strip() for line in "".join(params[0]["source"]).splitlines() if "=" in line}
        assert {"runs_dir", "seeds", "out_dir"} <= names, (n, names)

def test_readme_gathers_summaries_with_relative_images(tmp_path):
    write_summary(tmp_path / "table1_guidance", "Table 1", "It matches.", [pd.DataFrame(dict(row=["a"], x=[1.0]))],
                  ["t.png"])
    text = reproduce.write_readme(["table1_guidance", "fig07_nfe"], tmp_path).read_text()
    assert "![t](table1_guidance/t.png)" in text and "| a | 1.00 |" in text and "It matches." in text
    assert "## fig07_nfe\n\nNot run yet" in text

def test_the_verdict_table_gives_each_claim_the_budget_of_its_two_rows(tmp_path):
    nb = sys.modules.get("reproduce_notebooks") or importlib.import_module("reproduce_notebooks")
    res = tmp_path / "table1_guidance"; res.mkdir()
    (res / "summary.md").write_text("Budget, counted from scratch: 1,500 for online (Alg. 1 as written); 1,800 for "
                                    "unconditional, wall. train_min: minutes.\n")
    cmp = dict(a="online", b="none", metric="fd_cls", mean_diff=-6.0, spread=1.0, seeds="0, 1, 2", agree="3/3",
               verdict="as in the paper")
    claims = (("online beats unconditional", "table1_guidance", "x", None),
              ("offline beats unconditional", "table1_guidance", "y", None))
    pd.DataFrame([dict(cmp, comparison="x", budget="1,500 steps x batch 128 for both"),
                  dict(cmp, comparison="y", budget="")]).to_csv(res / "comparisons.csv", index=False)
    lines = nb.verdict_table(tmp_path, claims).splitlines()
    assert "| fd_cls -6.00 ± 1.00 | 0, 1, 2 (3/3) | 1,500 steps x batch 128 for both | as in the paper |" in lines[-4]
    # no budget of its own: the summary's caption, read whole, though a row's name has "Alg. 1" in it
    assert "| 1,500 for online (Alg. 1 as written); 1,800 for unconditional, wall |" in lines[-3], lines[-3]

def test_over_seeds_and_paper_tables():
    st = over_seeds([dict(row="a", fd_cls=2.0, precision=0.5), dict(row="a", fd_cls=4.0, precision=0.7)])
    t = pm(st)
    assert t.fd_cls[0] == "3.00 ± 1.41" and t.precision[0] == "0.60 ± 0.14" and t.seeds[0] == 2 and "recall" not in t
    assert paper_table("table1").set_index("row").paper_FID["unconditional"] == 45.1
    assert paper_table("table3_lsun_churches").set_index("row").paper_FID.isna()["class guidance"]

def test_paper_scale_trains_the_recipe_registry_through_a_launcher(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    reproduce.main(["train", "--dataset", "lsun", "--data-root", "/data/lsun_lmdb", "--vae", "/w/vae", "--seeds", "1",
                    "--runs-dir", str(tmp_path), "--only", "lsun_offline", "--launch", "torchrun --nproc_per_node 4"])
    assert [c[:6] for c in calls] == [["torchrun", "--nproc_per_node", "4", "-m", "selfguide", "train"]] * 2
    none, offline = calls
    assert ["--dataset", "lsun", "--data-root", "/data/lsun_lmdb", "--vae", "/w/vae"] == none[6:12]
    assert str(tmp_path / "lsun_none_s0") in none and ["--init", str(tmp_path / "lsun_none_s0")] == \
        offline[offline.index("--init"):offline.index("--init") + 2]
    with pytest.raises(SystemExit, match="--data-root"): reproduce.main(["train", "--dataset", "imagenet100"])

def test_paper_scale_notebooks_get_the_dataset_and_its_files(tmp_path, monkeypatch):
    cmds = []
    monkeypatch.setattr(reproduce.subprocess, "run",
                        lambda cmd, **kw: cmds.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    reproduce.main(["notebooks", "--dataset", "imagenet100", "--data-root", "/in/train", "--inception", "/w/inc.pt",
                    "--runs-dir", str(tmp_path / "runs"), "--outputs", str(tmp_path / "out"), "--seeds", "1"])
    assert len(cmds) == len(reproduce.PAPER_NOTEBOOKS) and "autoguidance" not in reproduce.PAPER_NOTEBOOKS
    c = cmds[0]
    for k, v in (("dataset", "imagenet100"), ("data_root", "/in/train"), ("inception", "/w/inc.pt")):
        assert ["-p", k, v] == c[c.index(k) - 1:c.index(k) + 2]
    assert "vae" not in c and "PAPER" not in (tmp_path / "out" / "README.md").read_text()
    assert (tmp_path / "out" / "README.md").read_text().startswith("# Results at paper scale")
    for n in reproduce.PAPER_NOTEBOOKS:  # every one takes the paper-scale parameters
        cells = json.loads((ROOT / "nbs" / f"{n}.ipynb").read_text())["cells"]
        src = "".join(next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))["source"])
        assert all(f"\n{k} = " in "\n" + src for k in ("dataset", *reproduce.PATHS)), n

def test_a_run_starts_when_its_dependency_is_done_and_not_after_it_failed(tmp_path, monkeypatch):
    order, lock = [], __import__("threading").Lock()
    def fake(cmd, **kw):
        name = Path(cmd[cmd.index("--out-dir") + 1]).name
        with lock: order.append(name)
        return subprocess.CompletedProcess(cmd, 1 if name == "base_s1" else 0)
    monkeypatch.setattr(reproduce.subprocess, "run", fake)
    with pytest.raises(SystemExit, match="2 runs failed"):  # base_s1 failed, so child_s1 never started
        reproduce.train_all(["child", "other"], [0, 1], jobs=2, runs_dir=tmp_path, runs=FAKE)
    assert order.index("base_s0") < order.index("child_s0") and "child_s1" not in order
    assert sorted(order) == ["base_s0", "base_s1", "child_s0", "other_s0", "other_s1"]

def test_every_result_notebook_checks_what_it_wrote_in_its_smoke_run():
    """Each result notebook's last cell, under IN_TEST (nbdev-test), checks its CSVs, PNGs and verdict with
    `check_result`; nbdev-test running the notebooks is what fails on an empty table."""
    for n in (*reproduce.NOTEBOOKS, "compare_guidance", "online_evidence", "online_diagnosis"):
        cells = json.loads((ROOT / "nbs" / f"{n}.ipynb").read_text())["cells"]
        src = "".join(cells[-1]["source"])
        assert cells[-1]["cell_type"] == "code" and src.startswith('if os.environ.get("IN_TEST"):'), n
        assert "check_result(" in src, n
