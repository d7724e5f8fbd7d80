import json, pytest, torch
from selfguide.train import train, load_run, read_manifest

SMALL = dict(dataset="digits", preset="tiny", patch_size=4, batch_size=32, lr=1e-3, warmup_steps=3, ema_decay=0.9, seed=3)

@pytest.mark.parametrize("guidance", ["none", "class"])
def test_resume_continues_the_same_trajectory(tmp_path, guidance):
    cfg = dict(SMALL, guidance=guidance, ckpt_every=4)
    straight = train(**cfg, steps=8, out_dir=str(tmp_path / "straight"))
    train(**cfg, steps=4, out_dir=str(tmp_path / "resumed"))           # stop after N steps ...
    resumed = train(**cfg, steps=8, out_dir=str(tmp_path / "resumed"))  # ... resume and train N more
    for ema in (False, True):
        a, _ = load_run(straight, ema=ema); b, _ = load_run(resumed, ema=ema)
        for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), f"{n} differs after resume (ema={ema})"
    opt_a = torch.load(straight / "checkpoints/last.pt", weights_only=False)["opt"]["state"]
    opt_b = torch.load(resumed / "checkpoints/last.pt", weights_only=False)["opt"]["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)

def test_manifest(tmp_path):
    run = train(**SMALL, guidance="class", steps=3, out_dir=str(tmp_path / "r"))
    m = read_manifest(run)
    assert m["params"]["guidance"] == "class" and m["params"]["steps"] == 3 and m["seed"] == 3
    assert m["timings"]["step_s_median"] > 0 and "final_loss" in m["metrics"] and m["git_revision"]
    assert (run / "loss.csv").read_text().count("\n") == 4

def test_bad_input_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="known datasets"): train(dataset="cifar", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="needs data_root .*--data-root"): train(dataset="lsun", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="known modes"):
        train(**dict(SMALL, guidance="bootstrap"), steps=1, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="larger than the dataset"):
        train(**dict(SMALL, batch_size=5000), steps=1, out_dir=str(tmp_path / "b"))
    train(**SMALL, steps=1, out_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="other settings"): train(**dict(SMALL, lr=0.1), steps=2, out_dir=str(tmp_path / "c"))
