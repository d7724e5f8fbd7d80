"""The main job as users run it: papermill on nbs/train.ipynb with parameters."""
import json, os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPERMILL = [sys.executable, "-m", "papermill"]

def run_papermill(*args, cwd=ROOT, env=None):
    env = {**{k: v for k, v in os.environ.items() if k != "IN_TEST"}, **(env or {})}
    return subprocess.run(PAPERMILL + ["nbs/train.ipynb", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)

def test_without_output_notebook_the_run_writes_its_results(tmp_path):
    out = tmp_path / "run"
    r = run_papermill("-p", "dataset", "digits", "-p", "steps", "3", "-p", "batch_size", "16", "-p", "n_samples", "10", "-p", "n_eval", "12",
                      "-p", "out_dir", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("samples.png", "loss.png", "loss.csv", "manifest.json"): assert (out / f).exists(), f
    m = json.loads((out / "manifest.json").read_text())
    assert m["params"]["steps"] == 3 and m["sampling"]["n"] == 12 and m["metrics"]["n_samples"] == 12

def test_paper_dataset_without_data_root_fails_naming_the_option(tmp_path):
    r = run_papermill(str(tmp_path / "out.ipynb"), "-p", "dataset", "lsun", "-p", "out_dir", str(tmp_path / "run"))
    assert r.returncode != 0 and "--data-root" in r.stderr + r.stdout

@pytest.mark.parametrize("dataset", ["lsun", "imagenet100"])
def test_paper_dataset_through_the_vae(tmp_path, dataset):
    """The users' command on fixtures: encode (LMDB or ImageNet folder -> latents), train, sample, decode, grid."""
    from fixtures import make_lsun_lmdb, make_imagenet, make_vae
    from selfguide.files import imagenet100_wnids
    root = (make_lsun_lmdb(tmp_path / "church_outdoor_train_lmdb") if dataset == "lsun"
            else make_imagenet(tmp_path / "train", imagenet100_wnids(), per_class=1))
    vae, out = make_vae(tmp_path / "sd-vae-ft-ema"), tmp_path / "run"
    r = run_papermill("-p", "dataset", dataset, "-p", "data_root", str(root), "-p", "vae", str(vae), "-p", "preset", "tiny",
                      "-p", "patch_size", "4", "-p", "image_size", "32", "-p", "steps", "3", "-p", "batch_size", "4",
                      "-p", "clusters", "4",                          # the recipe's online guidance, K fit for fixtures
                      "-p", "n_samples", "4", "-p", "n_eval", "4", "-p", "solver", "euler", "-p", "sample_steps", "2",
                      "-p", "out_dir", str(out), env={"SELFGUIDE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["params"]["vae"] == str(vae) and m["recipe"]["name"] == {"lsun": "lsun_churches"}.get(dataset, dataset)
    from PIL import Image
    assert Image.open(out / "samples.png").mode == "RGB" and m["sampling"]["n"] == 4

@pytest.mark.parametrize("guidance", ["online", "online_patch"])
def test_online_guidance_writes_prototype_figures(tmp_path, guidance):
    out = tmp_path / "run"
    r = run_papermill("-p", "guidance", guidance, "-p", "steps", "4", "-p", "batch_size", "16", "-p", "n_samples", "10",
                      "-p", "n_eval", "12", "-p", "solver", "euler", "-p", "sample_steps", "2", "-p", "monitor_every", "2", "-p", "out_dir", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("samples.png", "prototypes.png", "queries.png", "prototypes_hist.png"): assert (out / f).exists(), f
    m = json.loads((out / "manifest.json").read_text())
    assert [x["step"] for x in m["online"]["monitor"]] == [2, 4] and 0 < m["metrics"]["prototypes_used"] <= 1
