"""Amortised m* (`amortise=R`, nbs/04d_amortise.ipynb): after an image's first visit the feature pass runs on one row
in R, the cache goes into every checkpoint, and a stopped run resumes bit for bit. Two processes: test_distributed."""
import pytest, torch
from fixtures import make_digits_npz
from selfguide.online import Bootstrap
from selfguide.train import train, StepBatchSampler

@pytest.fixture(scope="module")
def few(tmp_path_factory):
    "32 digits as an .npz: a batch of 16 visits every image every 2 steps"
    return str(make_digits_npz(tmp_path_factory.mktemp("few") / "few.npz", 32))

def cfgs(few):
    small = dict(dataset="npz", data_root=few, guidance="online", preset="tiny", patch_size=4, batch_size=16, lr=1e-3,
                 warmup_steps=2, ema_decay=0.9, clusters=4, sk_hidden=32, sk_dim=8, monitor_images=32, device="cpu",
                 sk_mask=False, feature_t=0.05, feature_readout="patches", steps=8, amortise=4)   # 'ema' source
    paper = dict(small, sk_mask=True, feature_readout="token", feature_t=0.2)                      # 'tap' source
    return dict(small=small, paper=paper, patch=dict(small, guidance="online_patch", amortise=2))

@pytest.mark.parametrize("name,rows", [("small", [16, 16, 4, 4, 4, 4, 4, 4]), ("paper", [16, 16, 4, 4])])
def test_the_pass_runs_on_one_row_in_r_after_the_first_visit(few, tmp_path, monkeypatch, name, rows):
    seen, real = [], Bootstrap.feature
    def feature(self, model, x_t, t):
        if len(x_t) != 32: seen.append(len(x_t))                       # 32: the monitor's pass over all images
        return real(self, model, x_t, t)
    monkeypatch.setattr(Bootstrap, "feature", feature)
    run = train(**cfgs(few)[name], out_dir=str(tmp_path / name))       # warm-up: steps 0-3; 2 steps an epoch
    assert seen == rows                                                # 'tap': no pass in warm-up, all unseen at 4-5
    ids = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["m_star"]["ids"]
    assert ids.shape == (32,) and (ids >= 0).all() and (ids < 4).all()

@pytest.mark.parametrize("name,rows", [("small", [16] * 8), ("patch", [16 * 16] * 8)])
def test_sinkhorn_gets_a_whole_batch_from_the_bank(few, tmp_path, monkeypatch, name, rows):
    "'ema' source: the refreshed rows (4 of 16 after the first epoch) and the bank's newest, 16 images in all"
    import selfguide.online as online
    seen, real = [], online.sinkhorn
    monkeypatch.setattr(online, "sinkhorn", lambda scores, *a: seen.append(len(scores)) or real(scores, *a))
    monkeypatch.setattr(online, "codes_nmi", lambda *a, **k: 0.0)         # the monitor's own Sinkhorn: not a step's
    run = train(**cfgs(few)[name], out_dir=str(tmp_path / name))
    assert seen == rows
    bank = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["m_star"]["bank"]
    assert sum(len(pos) for pos, *_ in bank) == 16                     # one batch banked, newest first

@pytest.mark.parametrize("name", ["small", "paper", "patch"])
def test_amortised_run_resumes_bit_for_bit(few, tmp_path, monkeypatch, name):
    cfg = cfgs(few)[name]
    straight = train(**cfg, out_dir=str(tmp_path / "a"))
    real = StepBatchSampler.__iter__
    def crash_at_5(self):                                              # after warm-up, with a partly filled cache
        for step, batch in zip(range(self.start, self.stop), real(self)):
            if step == 5: raise RuntimeError("simulated crash")
            yield batch
    monkeypatch.setattr(StepBatchSampler, "__iter__", crash_at_5)
    with pytest.raises(RuntimeError, match="simulated crash"): train(**cfg, ckpt_every=3, out_dir=str(tmp_path / "b"))
    monkeypatch.setattr(StepBatchSampler, "__iter__", real)
    resumed = train(**cfg, ckpt_every=3, out_dir=str(tmp_path / "b"))
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=False) for r in (straight, resumed))
    assert a["sk_losses"] == b["sk_losses"] and a["losses"] == b["losses"]
    for part in ("model", "ema"):
        assert all(torch.equal(v, b[part][k]) for k, v in a[part].items()), part
    assert torch.equal(a["m_star"]["ids"], b["m_star"]["ids"])
    if name == "patch": assert a["m_star"]["ids"].shape == (32, 16)   # one id per patch

def test_amortise_is_checked(few, tmp_path):
    base = cfgs(few)["small"]
    with pytest.raises(ValueError, match="amortise must be 1"):
        train(**dict(base, amortise=0), out_dir=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="online guidance only|has none"):
        train(**dict(base, guidance="none"), out_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="refreshed rows of 16"):
        train(**dict(base, amortise=9), out_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="use --sk-sinkhorn batch"):
        train(**dict(base, sk_mask=True, sk_sinkhorn="masked", sk_features="ema"), out_dir=str(tmp_path / "e"))
    run = train(**dict(base, amortise=1, steps=2), out_dir=str(tmp_path / "d"))             # Eq. 16 as is: no cache
    assert "m_star" not in torch.load(run / "checkpoints" / "last.pt", weights_only=False)
