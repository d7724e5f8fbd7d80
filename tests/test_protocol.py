"""`--protocol released`: the authors' released values through the CLI, trainer and notebook, and what they change."""
import json, subprocess, sys
from pathlib import Path
import pytest, torch
from selfguide.cli import main
from selfguide.train import train, load_run
from selfguide.online import assign, m_star_bootstrap

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(dataset="digits", guidance="online", preset="tiny", patch_size=4, batch_size=16, lr=1e-3, warmup_steps=2,
             ema_decay=0.9, clusters=5, monitor_images=64, protocol="released", seed=1)

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(**SMALL, steps=6, ckpt_every=3, out_dir=str(tmp_path_factory.mktemp("released") / "run"))

def test_the_switch_sets_the_released_values_and_the_manifest_records_them(run):
    m = json.loads((run / "manifest.json").read_text())
    p = m["params"]
    assert (p["protocol"], p["feature_t"], p["p_drop"], p["time_scale"], p["feature_readout"], p["sk_mask"]) == \
        ("released", 0.15, 0.15, 1.0, "token", True)
    assert (p["sk_hidden"], p["sk_dim"], p["ema_warmup"]) == (64, 128, False)        # D / 2 and D of the tiny U-ViT
    assert m["recipe"]["protocol"]["name"] == "released" and m["online"]["sk_features"] == "tap"
    assert all("nmi_codes" in x for x in m["online"]["monitor"])                   # the released code's monitor too

def test_m_star_comes_from_the_ema_head_and_prototypes(run):
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert any(k.startswith("bootstrap.head") for k in ck["ema"])                  # the EMA keeps its own head
    model, cfg = load_run(run)
    assert torch.equal(model.bootstrap.protos.weight, ck["ema"]["bootstrap.protos.weight"])
    assert not torch.equal(ck["ema"]["bootstrap.protos.weight"], ck["model"]["bootstrap.protos.weight"])
    assert isinstance(model.cond_proj, torch.nn.Identity) and model.uncond_emb is not None
    ids = assign(m_star_bootstrap(model.bootstrap, model), model, torch.zeros(3, 1, 16, 16))
    torch.testing.assert_close(model.bootstrap.condition(ids), ck["ema"]["bootstrap.protos.weight"][ids])

def test_prototypes_stay_on_the_sphere_in_place(run):
    w = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]["bootstrap.protos.weight"]
    assert (w.norm(dim=1) - 1).abs().max() < 0.05                                  # renormalised before each step
    assert (w.norm(dim=1) - 1).abs().max() > 0                                     # ... and moved by the last one

def test_a_released_run_resumes_on_the_same_trajectory(run, tmp_path, monkeypatch):
    import selfguide.train as t
    half, real = tmp_path / "half", t.lr_at
    def stop_at_4(step, *a):                                               # after the checkpoint of step 3
        if step == 4: raise KeyboardInterrupt
        return real(step, *a)
    monkeypatch.setattr(t, "lr_at", stop_at_4)
    with pytest.raises(KeyboardInterrupt): train(**SMALL, steps=6, ckpt_every=3, out_dir=str(half))
    monkeypatch.undo()
    train(**SMALL, steps=6, ckpt_every=3, out_dir=str(half))
    a = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(half / "checkpoints" / "last.pt", weights_only=False)
    for part in ("model", "ema"):
        for k, v in a[part].items(): assert torch.equal(v, b[part][k]), f"{part}.{k} differs after resume"

def test_explicit_options_beat_the_protocol_and_bad_names_fail_in_one_line(tmp_path, capsys):
    r = train(**dict(SMALL, feature_t=0.2, time_scale=1000.0), steps=1, out_dir=str(tmp_path / "o"))
    p = json.loads((r / "manifest.json").read_text())["params"]
    assert (p["feature_t"], p["time_scale"], p["p_drop"]) == (0.2, 1000.0, 0.15)
    capsys.readouterr()
    with pytest.raises(SystemExit): main(["train", "--protocol", "sgfm", "--out-dir", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "package, released" in err[0]

def test_the_train_notebook_takes_the_protocol(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "papermill", "nbs/train.ipynb", str(tmp_path / "o.ipynb"), "-p",
                        "guidance", "online", "-p", "protocol", "released", "-p", "steps", "2",
                        "-p", "batch_size", "16",
                        "-p", "n_samples", "4", "-p", "n_eval", "4", "-p", "solver", "euler", "-p", "sample_steps", "2",
                        "-p", "out_dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["params"]["protocol"] == "released"
