"""The result notebooks at paper scale on tiny fixtures: LSUN's LMDB through a random SD-VAE, the recipe's registry
trained for a few steps, FID and IS from a stand-in Inception; the notebook's parameters are all it takes."""
import json
import pandas as pd, papermill as pm, pytest
from pathlib import Path
from fixtures import make_lsun_lmdb, make_vae, make_inception_standin
from selfguide.scale import registry
from selfguide.results import smoke_runs, finished_runs, run_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(preset="tiny", patch_size=4, image_size=32, steps=4, batch_size=8, warmup_steps=1, ckpt_every=2,
            clusters=4, monitor_every=2, monitor_images=8)

@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    files = dict(data_root=str(make_lsun_lmdb(tmp / "church_outdoor_train_lmdb", n=12, corrupt=0)),
                 vae=str(make_vae(tmp / "sd-vae-ft-ema")), inception=str(make_inception_standin(tmp / "inc.pt")))
    runs, R = registry("lsun", data_root=files["data_root"], vae=files["vae"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFGUIDE_CACHE", str(tmp / "cache"))
        smoke_runs(tmp / "runs", [R[r] for r in ("none", "online", "offline", "online_patch")], runs=runs, **TINY)
    return tmp, files, R

def test_fig04_and_fig19_run_at_paper_scale_from_parameters(paper, monkeypatch):
    tmp, files, R = paper
    monkeypatch.setenv("SELFGUIDE_CACHE", str(tmp / "cache")); monkeypatch.delenv("IN_TEST", raising=False)
    assert [sorted(run_checkpoints(f)) for f in finished_runs(tmp / "runs", R["online"], [0]).values()] == [[2, 4]]
    common = dict(dataset="lsun", runs_dir=str(tmp / "runs"), seeds=1, n_eval=8, solver="euler", steps=2, **files)
    out = tmp / "fig04"; out.mkdir()
    pm.execute_notebook(str(ROOT / "nbs" / "fig04_training.ipynb"), str(out / "fig04.ipynb"), cwd=str(ROOT),
                        parameters=dict(common, out_dir=str(out)), kernel_name="python3", progress_bar=False)
    summary = (out / "summary.md").read_text()
    assert "(lsun, paper scale)" in summary and "final fid" in summary
    evals = list((tmp / "runs" / "lsun_online_s0" / "evals").glob("*_inc*.json"))
    assert len(evals) == 2 and all(json.loads(f.read_text())["n_samples"] == 8 for f in evals)  # steps 2 and 4
    out = tmp / "fig19"; out.mkdir()
    pm.execute_notebook(str(ROOT / "nbs" / "fig19_trajectory.ipynb"), str(out / "fig19.ipynb"), cwd=str(ROOT),
                        parameters=dict(common, out_dir=str(out), traj_samples=2, traj_steps=4),
                        kernel_name="python3", progress_bar=False)
    assert (out / "fig19_lsun_online.png").exists() and "(lsun, paper scale)" in (out / "summary.md").read_text()

def test_table1_at_paper_scale_has_one_online_row_and_fid(paper, monkeypatch):
    tmp, files, R = paper
    monkeypatch.setenv("SELFGUIDE_CACHE", str(tmp / "cache")); monkeypatch.delenv("IN_TEST", raising=False)
    out = tmp / "table1"; out.mkdir()
    pm.execute_notebook(str(ROOT / "nbs" / "table1_guidance.ipynb"), str(out / "t1.ipynb"), cwd=str(ROOT),
                        parameters=dict(dataset="lsun", runs_dir=str(tmp / "runs"), seeds=1, n_eval=8, solver="euler",
                                        steps=2, out_dir=str(out), **files), kernel_name="python3", progress_bar=False)
    t = pd.read_csv(out / "table1.csv")
    assert list(t.row) == ["unconditional", "offline guidance", "bootstrapping (online, Alg. 1 as written)",
                           "bootstrapping (patch)"]                       # LSUN: no class row; no DINO weights given
    assert t.fid.notna().all() and "fd_cls" not in t and "Ours (fid, " in (out / "summary.md").read_text()

def test_fig05_query_images_through_the_vae_at_paper_scale(paper, monkeypatch):
    tmp, files, R = paper
    monkeypatch.setenv("SELFGUIDE_CACHE", str(tmp / "cache")); monkeypatch.delenv("IN_TEST", raising=False)
    out = tmp / "fig05"; out.mkdir()
    pm.execute_notebook(str(ROOT / "nbs" / "fig05_query.ipynb"), str(out / "fig05.ipynb"), cwd=str(ROOT),
                        parameters=dict(dataset="lsun", runs_dir=str(tmp / "runs"), out_dir=str(out), seeds=1,
                                        solver="euler", steps=2, per_query=2, n_queries=3, **files),
                        kernel_name="python3", progress_bar=False)
    from PIL import Image
    for level in ("online", "online_patch"):
        assert Image.open(out / f"fig05_lsun_{level}.png").size[1] > 3 * 32  # 3 rows: query + 2 decoded samples each
    assert "not measured" in (out / "summary.md").read_text()
