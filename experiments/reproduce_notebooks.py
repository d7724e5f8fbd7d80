"""The result notebooks of `make reproduce` and the README they make (`experiments/reproduce.py notebooks`, `readme`).

Each result notebook runs under papermill with `runs_dir`, `seeds` and its output folder `outputs/<result>/` (PNG,
CSV, summary.md, the executed notebook); it reads each run from its folder here, else from the committed ledger
(`$SELFGUIDE_LEDGER`: `<outputs>/ledger`), and adds there the evaluations it asks for. A notebook that loads a
checkpoint which is not here (the grids, trajectories and query samples of a run trained on another machine) stops;
its committed outputs stay as they were, and the pass says so in one line. `write_readme` gathers the summaries
into `outputs/README.md`.
"""
from __future__ import annotations
import os, re, shutil, subprocess, sys, tempfile, time
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
