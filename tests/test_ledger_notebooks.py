"""Result notebooks render from the committed ledger: each notebook's smoke path (IN_TEST, as nbdev-test runs it) once
with its run folders here, then again with them gone (another machine): the same CSV rows, nothing trained again, and
the notebook says which parts that load a checkpoint it skipped. The first screen of outputs/README.md: the verdict
of each claim read from the results' comparisons.csv, "not measured" where there is none."""
import importlib.util, os, shutil
from pathlib import Path
import pandas as pd, pytest
from fastcore.nbio import read_nb
from execnb.shell import CaptureShell

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("table2_ablations", "fig11_guidance", "autoguidance", "fig04_training", "fig16_clusters",  # cheap ones
             "fig09_clusters", "sweep_nmi_ari")
STOPS = ("fig19_trajectory", "fig05_query")  # every part loads a checkpoint: from the ledger alone they stop (NotHere)


def execute(name: str, smoke_dir: Path) -> str:
    "Run result notebook `name` as nbdev-test does (IN_TEST), its runs, ledger and outputs in `smoke_dir`; its output"
    env = dict(IN_TEST="1", SELFGUIDE_SMOKE_DIR=str(smoke_dir), MPLBACKEND="Agg")
    old, cwd = {k: os.environ.get(k) for k in env}, os.getcwd()
    os.environ.update(env)
    try:
        nb = read_nb(ROOT / "nbs" / f"{name}.ipynb")
        CaptureShell(ROOT / "nbs").run_all(nb, exc_stop=True)
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return "".join("".join(o.get("text", "")) for c in nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def tables(out: Path) -> dict:
    return {f.name: f.read_text() for f in sorted(out.glob("*.csv"))}


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    "Each notebook with its runs here, then (run folders deleted) from the ledger alone"
    d = tmp_path_factory.mktemp("smoke")
    first = {n: (execute(n, d), tables(d / n), (d / n / "summary.md").read_text()) for n in (*NOTEBOOKS, *STOPS)}
    trained = sorted(p.name for p in (d / "runs").iterdir())
    shutil.rmtree(d / "runs")
    (d / "fig11_guidance" / "grids.json").unlink()  # its grids' record lost: they are skipped, not kept
    second = {n: (execute(n, d), tables(d / n), (d / n / "summary.md").read_text()) for n in NOTEBOOKS}
    for n in STOPS:
        with pytest.raises(Exception) as e: execute(n, d)
        second[n] = e.value
    return d, first, second, trained


def test_the_tables_are_the_same_from_the_ledger_alone(twice):
    d, first, second, trained = twice
    assert len(trained) == 14 and not (d / "runs").exists()            # nothing trained the second time
    for n in NOTEBOOKS:
        assert first[n][1] and first[n][1] == second[n][1], n         # every CSV, row for row
    assert "not trained (left out): none" in second["table2_ablations"][0]
    own = sorted(f.name for f in (d / "ledger" / "digits_none_s0" / "evals" / "autoguidance").iterdir())
    assert own == ["none_digits_nano-last_G1_g0.4_eulerk4_n24_s0.json",  # autoguidance's own evaluations: the 1/4
                   "none_digits_none-step_2_G1_g0.4_eulerk4_n24_s0.json",  # and 1/2 guides of a 4-step run are one
                   "none_noguide_G0_g0.4_eulerk4_n24_s0.json"], own  # checkpoint, step 2: one evaluation


def test_the_notebooks_say_which_checkpoint_parts_they_skipped(twice):
    d, first, second, _ = twice
    assert "skipped" not in first["table2_ablations"][2] and "skipped" not in first["fig11_guidance"][2]
    t2, f11 = second["table2_ablations"], second["fig11_guidance"]
    assert "warm-up weight check, seed 0's weights: skipped, digits_online_paper seed 0 is not here" in t2[0]
    assert "Checkpoints not here for seed 0 (committed)" in t2[2]      # the weights kept from the first execution
    for run in ("digits_online", "digits_class", "digits_offline"):
        note = f"Fig. 13/14 grid of {run}: skipped, {run} seed 0 is not here with its checkpoint (in the ledger only)."
        assert note in f11[0] and note in f11[2], run
    assert "![fig13_samples_" in first["fig11_guidance"][2] and "![fig13_samples_" not in f11[2]
    kept = "kept as drawn earlier from the same training (seed 0; {} not all here with their checkpoints)."
    ag = second["autoguidance"]                         # the others keep seed 0's grids drawn the first time
    for png, run in (("samples_none.png", "digits_none"), ("samples_online_AG.png", "digits_online")):
        note = f"the grid {png}: " + kept.format(run)
        assert note in ag[0] and note in ag[2], png
    assert "![samples_none]" in first["autoguidance"][2] and "![samples_none]" in ag[2]
    f16 = second["fig16_clusters"]
    for png, part, run in (("fig17_online_prototypes", "Fig. 17 (online prototypes)", "digits_online"),
                           ("fig17_offline_clusters", "Fig. 17 (offline clusters)", "digits_offline"),
                           ("fig18_offline_samples", "Fig. 18", "digits_offline")):
        assert f"![{png}]" in first["fig16_clusters"][2] and f"![{png}]" in f16[2], png
        assert f"{part}: " + kept.format(run) in f16[2], part
    f9 = second["fig09_clusters"]                       # the purity of each seed from the ledger, the grid kept
    assert "![fig09_digits]" in first["fig09_clusters"][2] and "![fig09_digits]" in f9[2]
    assert "the grid of digits_online: " + kept.format("digits_online") in f9[2]
    gone = _reproduce_notebooks().GONE                  # the pass keeps the committed outputs of a notebook so stopped
    for n, run in (("fig19_trajectory", "digits_online"), ("fig05_query", "digits_online_patch")):
        e = second[n]
        assert type(e).__name__ == "NotHere" and "\n" not in str(e) and gone.search(f"NotHere: {e}"), (n, e)
        assert f"{run} seed 0 is not here with its checkpoint (in the ledger only)" in str(e), e


def _reproduce_notebooks():
    spec = importlib.util.spec_from_file_location("rn", ROOT / "experiments" / "reproduce_notebooks.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


CMP = ["comparison", "a", "b", "metric", "paper", "per_seed", "seeds", "mean_diff", "spread", "agree", "verdict"]


def test_the_first_screen_lists_each_claims_verdict_as_its_result_wrote_it(tmp_path):
    rn = _reproduce_notebooks()
    (tmp_path / "table1_guidance").mkdir(); (tmp_path / "table2_ablations").mkdir()
    pd.DataFrame([["offline - unconditional", "offline guidance", "unconditional", "fd_cls", "a lower",
                   "-9.10, -8.20, -10.00", "0, 1, 2", -9.1, 0.9, "3/3", "as in the paper", "table 1"],
                  ["patch - class", "bootstrapping (patch)", "class guidance", "fd_cls", "a lower", "+0.50", "0", 0.5,
                   float("nan"), "0/1", "within noise", "table 1"]],
                 columns=[*CMP, "block"]).to_csv(tmp_path / "table1_guidance" / "comparisons.csv", index=False)
    (tmp_path / "pretrained_start").mkdir()  # experiments/pretrained_start.py --render: one block per dataset
    pd.DataFrame([["(a) - (c): online fine-tuning vs the control", "ft_online_none", "cont_none", "fd_cls", "a lower",
                   "+2.00, +2.50, +1.50", "0, 1, 2", 2.0, 0.5, "0/3", "disagrees", "digits"]],
                 columns=[*CMP, "block"]).to_csv(tmp_path / "pretrained_start" / "comparisons.csv", index=False)
    (tmp_path / "pretrained_start" / "summary.md").write_text(
        "# Pretrained starts\n\n## digits\n\nPretrained starts (digits, ...): budget counted from scratch at batch "
        "128, 1,500 steps for the inits and 3,000 for (a)-(d) (a fine-tuning counts its init's 1,500).\n\n"
        "## fashion_mnist\n\nPretrained starts (fashion_mnist, ...): budget counted from scratch at batch 128, 3,000 "
        "steps for the inits and 6,000 for (a)-(d).\n")
    pd.DataFrame([["w/o [CLS] token - full method", "w/o [CLS] token", "full method", "fd_cls", "a higher",
                   "+1.00, -0.40, +0.30", "0, 1, 2", 0.3, 0.7, "2/3", "within noise"]],
                 columns=CMP).to_csv(tmp_path / "table2_ablations" / "comparisons.csv", index=False)
    (tmp_path / "table1_guidance" / "summary.md").write_text(
        "## Table 1\n\nEach cell: 1000 samples. Budget, counted from scratch: 1,500 steps x batch 128 for every row "
        "(offline guidance: 750 (none) + 750 (offline)). train_min: wall minutes.\n\nPaper: ...")
    text = rn.write_readme(["table1_guidance", "table2_ablations"], tmp_path).read_text()
    row = lambda claim: next(l for l in text.splitlines() if l.startswith(f"| {claim} |"))
    t1 = "[table1_guidance](table1_guidance/comparisons.csv)"
    t2 = "[table2_ablations](table2_ablations/comparisons.csv)"
    assert row("Offline guidance beats unconditional (digits)") == (
        "| Offline guidance beats unconditional (digits) | fd_cls -9.10 ± 0.90 | 0, 1, 2 (3/3) | 1,500 steps x batch "
        f"128 for every row (offline guidance: 750 (none) + 750 (offline)) | as in the paper | {t1} |")
    patch = row("Patch-level guidance beats class guidance (digits)")                 # one seed: no spread, '–'
    assert " | fd_cls +0.50 ± – | 0 (0/1) | 1,500 steps x batch 128 for every row (" in patch, patch
    assert patch.endswith(f"| within noise | {t1} |"), patch
    assert row("Pretrained start (digits): (a) online fine-tuning beats (c) the unconditional control").endswith(
        f"| fd_cls +2.00 ± 0.50 | 0, 1, 2 (0/3) | 3,000 steps x batch 128 for (a)-(d), 1,500 for their inits "
        f"| disagrees | [pretrained_start](pretrained_start/comparisons.csv) |")
    assert row("Table 2: w/o [CLS] token, worse than the full method").endswith(
        f"| fd_cls +0.30 ± 0.70 | 0, 1, 2 (2/3) | not stated | within noise | {t2} |")   # no summary: no caption
    for claim, src in (("Online guidance beats unconditional (digits, Alg. 1 as written)", t1),  # not in its CSV
                       ("Pretrained start (Fashion-MNIST): (a) online fine-tuning beats (c) the unconditional control",
                        "[pretrained_start](pretrained_start/comparisons.csv)"),  # no fashion_mnist block yet
                       ("Autoguidance ‡: it adds to online guidance", "autoguidance (no comparisons.csv yet)")):
        assert row(claim) == f"| {claim} | – | – | – | not measured | {src} |", row(claim)
    assert text.index("# Results at CPU scale") < text.index("## Verdicts at CPU scale") < text.index(
        "Written by `python experiments/reproduce.py readme`") < text.index("## Table 1")  # then the rest as before
    assert "Verdicts" not in rn.write_readme(["table1_guidance"], tmp_path, rn.PAPER_INTRO).read_text()
