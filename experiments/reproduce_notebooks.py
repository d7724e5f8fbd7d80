"""The result notebooks of `make reproduce` and the README they make (`experiments/reproduce.py notebooks`, `readme`).

Each result notebook runs under papermill with `runs_dir`, `seeds` and its output folder `outputs/<result>/` (PNG,
CSV, summary.md, the executed notebook); it reads each run from its folder here, else from the committed ledger
(`$SELFGUIDE_LEDGER`: `<outputs>/ledger`), and adds there the evaluations it asks for. What needs no checkpoint
renders from the ledger; a part that loads a checkpoint which is not here (a grid of a run trained on another
machine) is skipped with a note in its summary. A notebook with nothing to draw without them (fig05_query,
fig19_trajectory), or that needs an evaluation the ledger lacks of a run whose checkpoint is not here, stops
(`NotHere`); its committed outputs stay as they were, and the pass says so in one line. `write_readme` gathers the
summaries into `outputs/README.md`, and opens it with the verdict of each claim of the paper (`verdict_table`),
read from the `comparisons.csv` and the budget caption each result wrote.
"""
from __future__ import annotations
import csv, math, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = Path(os.environ.get("SELFGUIDE_RUNS", ROOT / "runs" / "reproduce"))
OUTPUTS = ROOT / "outputs"
NOTEBOOKS = ("table1_guidance", "table2_ablations", "table3_datasets", "sweep_nmi_ari", "fig04_training",
             "fig05_query", "fig07_nfe", "fig09_clusters", "fig11_guidance", "fig16_clusters", "fig19_trajectory",
             "autoguidance")
# at paper scale: the results written in roles (sweep_nmi_ari takes an official checkpoint by its own parameters,
# autoguidance is beside the paper)
PAPER_NOTEBOOKS = ("table1_guidance", "table2_ablations", "table3_datasets", "fig04_training", "fig05_query",
                   "fig07_nfe", "fig11_guidance", "fig16_clusters", "fig19_trajectory")
PATHS = ("data_root", "latents", "vae", "encoder_weights", "inception", "reference_stats")  # notebook parameters


def notebook_command(name: str, seeds: int, runs_dir=RUNS_DIR, outputs=OUTPUTS, **params) -> list[str]:
    "The papermill command that runs result notebook `name` into outputs/<name>/<name>.ipynb (`params`: more -p)"
    extra = [x for k, v in params.items() if v is not None for x in ("-p", k, str(v))]
    return [sys.executable, "-m", "papermill", str(ROOT / "nbs" / f"{name}.ipynb"),
            str(outputs / name / f"{name}.ipynb"), "-p", "runs_dir", str(runs_dir), "-p", "seeds", str(seeds),
            "-p", "out_dir", str(outputs / name), *extra, "--cwd", str(ROOT)]


GONE = re.compile(r"(?:NotHere|FileNotFoundError): (.*(?:not here|no checkpoint).*)")  # what it needs went


def checkpoint_gone(log: Path) -> str | None:
    "The error that stopped a notebook because a checkpoint it reads is not here (its papermill log), else None"
    found = GONE.findall(re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace")))
    return found[-1].strip()[:300] if found else None


def run_notebooks(names, seeds: int, runs_dir=RUNS_DIR, outputs=OUTPUTS, **params) -> None:
    """Execute each result notebook with papermill (progress in the terminal; the ledger: <outputs>/ledger); one that
    stops for a checkpoint which is not here keeps its committed outputs and says so"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", SELFGUIDE_LEDGER=str(outputs / "ledger"))
    env.pop("IN_TEST", None)
    failed = []
    for i, name in enumerate(names):
        out, keep = outputs / name, Path(tempfile.mkdtemp()) / name
        out.mkdir(parents=True, exist_ok=True); shutil.copytree(out, keep)               # the committed outputs
        t0 = time.time(); print(f"[{i + 1}/{len(names)}] {name} ...", flush=True)
        with open(out / "papermill.log", "w") as log:
            rc = subprocess.run(notebook_command(name, seeds, runs_dir, outputs, **params), cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT).returncode
        if rc and (gone := checkpoint_gone(out / "papermill.log")):
            log = (out / "papermill.log").read_bytes()
            shutil.rmtree(out); shutil.copytree(keep, out); (out / "papermill.log").write_bytes(log)
            what = f"kept its committed outputs: a checkpoint it reads is not here ({gone})"
        else:
            if rc: failed.append(name)
            what = "done" if rc == 0 else f"FAILED (exit {rc}), see {out}/papermill.log"
        shutil.rmtree(keep.parent)
        print(f"[{i + 1}/{len(names)}] {name}: {what} in {(time.time() - t0) / 60:.1f} min", flush=True)
    if failed: sys.exit(f"reproduce: notebooks failed: {', '.join(failed)}")


CPU_INTRO = ("# Results at CPU scale, beside the paper's\n\nWritten by `python experiments/reproduce.py readme` from "
             "each result's `summary.md` (`make reproduce` runs the whole chain). Our quality metric is `fd_cls`, a "
             "Frechet distance in a small classifier's features, not FID; the paper's numbers are FID/IS on ImageNet "
             "and LSUN. Table cells are mean ± std (ddof 1) over the seeds that finished.")
PAPER_INTRO = ("# Results at paper scale, beside the paper's\n\nWritten by `python experiments/reproduce.py readme "
               "--dataset ...` from each result's `summary.md`; the quality column is Inception's FID where the "
               "notebooks were given Inception weights.")


_ABLATIONS = {"w/o stop-gradient": "stop-gradient", "w/o [CLS] token": "[CLS] token",
              "w/o warm-up weight": "warm-up weight", "w/o timestep mask": "timestep mask"}
_PRE = {"(a) - (c): online fine-tuning vs the control": "(a) online fine-tuning beats (c) the unconditional control",
        "(b) - (c): online from the class init † vs the control":
            "(b) online fine-tuning of the class init † beats (c)"}
_AG = {"none + AG (1/4 steps) - none": "the run at 1/4 of its steps as guide beats no guide",
       "none + AG (1/2 steps) - none": "the run at 1/2 of its steps as guide beats no guide",
       "none + AG (nano) - none": "a smaller network as guide beats no guide",
       "online + AG (3/4 steps) - online": "it adds to online guidance"}
CLAIMS = (  # (the claim, the result whose comparisons.csv measures it, the comparison there, its block or None)
    ("Online guidance beats unconditional (digits, small-image defaults)", "table1_guidance",
     "online (small-image defaults) - unconditional", "table 1"),
    ("Online guidance beats unconditional (digits, Alg. 1 as written)", "table1_guidance",
     "online (Alg. 1 as written) - unconditional", "table 1"),
    ("Online guidance beats unconditional at equal wall time (digits, small-image defaults)", "table1_guidance",
     "online (small-image defaults) - unconditional, equal wall time", "table 1"),
    ("Offline guidance beats unconditional (digits)", "table1_guidance", "offline - unconditional", "table 1"),
    ("Patch-level guidance beats class guidance (digits)", "table1_guidance", "patch - class", "table 1"),
    ("Online guidance beats unconditional (Fashion-MNIST)", "table3_datasets", "online - unconditional", "table 3"),
    ("Online guidance beats unconditional at equal wall time (Fashion-MNIST)", "table3_datasets",
     "online - unconditional, equal wall time", "table 3"),
    ("Offline guidance beats unconditional (Fashion-MNIST)", "table3_datasets", "offline - unconditional", "table 3"),
    *((f"Table 2: w/o {what}, worse than the full method", "table2_ablations", f"{row} - full method", None)
      for row, what in _ABLATIONS.items()),
    *((f"Pretrained start ({ds}): {claim}", "pretrained_start", comparison, block) for ds, block in
      (("digits", "digits"), ("Fashion-MNIST", "fashion_mnist")) for comparison, claim in _PRE.items()),
    ("Prototypes drawn by their frequency (the paper's choice) beat uniform ones (digits)", "autoguidance",
     "online, uniform prototypes - online", None),
    *((f"Autoguidance ‡: {claim}", "autoguidance", comparison, None) for comparison, claim in _AG.items()),
)
VERDICT_INTRO = ("## Verdicts at CPU scale\n\nEach claim, our per-seed paired differences a - b in the quality "
                 "column (a, b: the two rows the comparison names; mean ± spread, the std over seeds of the "
                 "differences), the seeds with both rows (and how many differ in the paper's direction), the budget "
                 "of the two rows, counted from scratch, and the verdict, all as the result wrote them "
                 "(`comparisons.csv`: the budget of its two rows, else its summary's budget caption): "
                 "\"as in the paper\" only where all 3 seeds agree and the mean difference exceeds the spread, "
                 "\"disagrees\" where all 3 go the other way by as much, "
                 "\"within noise\" otherwise, \"not measured\" where the result has no such comparison yet.")
VERDICT_NOTE = ("† backbone trained with labels. ‡ beyond the paper: Karras et al. (2024) report that a weaker "
                "guide improves an unguided model; \"as in the paper\" there means as they report.")


def _float(x: str) -> float:
    try: return float(x)
    except (TypeError, ValueError): return math.nan


def stated_budget(summary: Path, block=None) -> str:
    "The budget a result's summary.md states for its rows (`block` 'pretrained starts': that block's), as written"
    text = summary.read_text() if summary.is_file() else ""
    if block in ("digits", "fashion_mnist"):  # experiments/pretrained_start.py's summary: one section per dataset
        text, block = text.partition(f"\n## {block}\n")[2].split("\n## ")[0], "pretrained starts"
    if block == "pretrained starts":
        m = re.search(r"budget counted from scratch at batch (\d+), ([\d,]+) steps for the inits and ([\d,]+) for "
                      r"\(a\)-\(d\)", text)
        return f"{m[3]} steps x batch {m[1]} for (a)-(d), {m[2]} for their inits" if m else "not stated"
    m = re.search(r"Budget, counted from scratch: (.+?)\.(?:\s+(?:train_min|wall minutes)|\s*$)", text, re.M)
    return m[1] if m else "not stated"


def verdict_table(outputs=OUTPUTS, claims=CLAIMS) -> str:
    "The first screen: a Markdown table of each claim's verdict, read from the results' comparisons.csv, never redone"
    lines = ["| claim | ours: a - b, mean ± spread | seeds (in the paper's direction) | budget, from scratch "
             "| verdict | from |", "|---|---|---|---|---|---|"]
    for claim, result, comparison, block in claims:
        f = outputs / result / "comparisons.csv"
        rows = list(csv.DictReader(f.read_text().splitlines())) if f.is_file() else []
        r = next((r for r in rows if r["comparison"] == comparison and block in (None, r.get("block"))), None)
        src = f"[{result}]({result}/comparisons.csv)" if f.is_file() else f"{result} (no comparisons.csv yet)"
        mean, sd = _float((r or {}).get("mean_diff")), _float((r or {}).get("spread"))
        if r is None or r["verdict"] == "not measured" or math.isnan(mean):
            lines.append(f"| {claim} | – | – | – | not measured | {src} |"); continue
        ours = f"{r['metric']} {mean:+.2f} ± {'–' if math.isnan(sd) else f'{sd:.2f}'}"
        budget = r.get("budget") or stated_budget(outputs / result / "summary.md", block)  # the two rows', else all
        lines.append(f"| {claim} | {ours} | {r['seeds']} ({r['agree']}) | {budget} | {r['verdict']} | {src} |")
    return VERDICT_INTRO + "\n\n" + "\n".join(lines) + "\n\n" + VERDICT_NOTE


def write_readme(names=NOTEBOOKS, outputs=OUTPUTS, intro: str = CPU_INTRO, claims=None) -> Path:
    """<outputs>/README.md from each result's summary.md (image links made relative to it), opened by the verdict of
    each of `claims` (default: `CLAIMS` under the CPU-scale intro, none at paper scale) after the title"""
    claims = (CLAIMS if intro == CPU_INTRO else ()) if claims is None else claims
    title, _, rest = intro.partition("\n\n")
    parts = [title, *([verdict_table(outputs, claims)] if claims else []), *([rest] if rest else [])]
    for name in names:
        f = outputs / name / "summary.md"
        if not f.exists():
            parts.append(f"## {name}\n\nNot run yet (`python experiments/reproduce.py notebooks --only {name}`).")
            continue
        text = re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m: f"]({name}/{m.group(1)})", f.read_text().strip())
        parts.append(text + f"\n\n(notebook: [{name}/{name}.ipynb]({name}/{name}.ipynb))")
    path = outputs / "README.md"; path.write_text("\n\n".join(parts) + "\n")
    return path
