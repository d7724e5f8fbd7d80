"""Online bootstrapping (Alg. 1) in the trainer: warm-up, EMA opening, conditions, checkpoints, sampling."""
import copy, json
import numpy as np, pytest, torch
from selfguide.train import train, load_run, TrainConfig
from selfguide.online import assign, sk_weight
from selfguide.cli import main, sample_run

SMALL = dict(dataset="digits", guidance="online", preset="tiny", patch_size=4, batch_size=16, lr=1e-3, warmup_steps=2,
             ema_decay=0.9, clusters=5, sk_hidden=32, sk_dim=8, monitor_images=64, sk_mask=False)

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(**SMALL, steps=6, out_dir=str(tmp_path_factory.mktemp("online") / "run"))

def test_manifest_and_loss_log_hold_the_sk_monitoring(run):
    m = json.loads((run / "manifest.json").read_text())
    assert m["online"]["warmup_end"] == 3 and [x["step"] for x in m["online"]["monitor"]] == [3, 6]
    for k in ("final_sk_loss", "prototypes_used", "prototype_counts", "nmi", "ari"): assert k in m["metrics"], k
    assert sum(m["metrics"]["prototype_counts"]) == 64                  # monitor_images of the training set
    header, *rows = (run / "loss.csv").read_text().splitlines()
    assert header == "step,loss,sk_loss,sk_weight,nmi_m_star,nmi_codes_released" and len(rows) == 6
    assert [float(r.split(",")[3]) for r in rows] == [round(sk_weight(i, 6), 4) for i in range(6)]  # 0, 1/3, 2/3, 1, 1, 1
    nmis = [r.split(",")[4:] for r in rows]                              # at the monitor steps 3 and 6 only
    assert [i for i, v in enumerate(nmis) if v != ["", ""]] == [2, 5]
    last = m["online"]["monitor"][-1]
    assert [float(nmis[5][0]), float(nmis[5][1])] == [round(last[k], 4) for k in ("nmi", "nmi_codes")]

def test_checkpoint_keeps_head_and_prototypes(run):
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert any(k.startswith("bootstrap.protos") for k in ck["model"]) and not any(k.startswith("bootstrap") for k in ck["ema"])
    model, cfg = load_run(run)
    assert model.bootstrap.k == 5 and model.cond_dim == 8 and cfg.guidance == "online"
    assert torch.equal(model.bootstrap.protos.weight, ck["model"]["bootstrap.protos.weight"])

def test_ema_copies_the_model_during_warm_up_and_opens_after(tmp_path):
    warm = train(**SMALL, steps=4, sk_sigma=0.75, out_dir=str(tmp_path / "w"))  # all 3 steps run are warm-up ... then one more
    ck = torch.load(warm / "checkpoints" / "last.pt", weights_only=False)
    diff = max((ck["model"][k] - v).abs().max().item() for k, v in ck["ema"].items() if v.is_floating_point())
    assert diff > 0                                                      # step 3 (after warm-up) averaged
    warm2 = train(**SMALL, steps=4, sk_sigma=0.99, out_dir=str(tmp_path / "w2"))  # every step is warm-up
    ck2 = torch.load(warm2 / "checkpoints" / "last.pt", weights_only=False)
    assert all(torch.equal(ck2["model"][k], v) for k, v in ck2["ema"].items())

def test_paper_settings_train(tmp_path):
    r = train(**{**SMALL, "sk_mask": True, "feature_readout": "token", "feature_t": 0.2, "batch_size": 64}, steps=3,
              out_dir=str(tmp_path / "paper"))
    model, _ = load_run(r)
    assert model.cls_token is not None                                   # the [CLS] readout adds a CLS token

@pytest.mark.parametrize("opts", [dict(sk_two_view=True), dict(online_condition="index"), dict(sk_stopgrad=False),
                                  dict(sk_form="frobenius"), dict(guidance="online_patch")])
def test_every_option_trains_and_samples(tmp_path, opts):
    r = train(**{**SMALL, **opts}, steps=4, out_dir=str(tmp_path / "r"))
    res = sample_run(r, 3, solver="euler", steps=2)
    assert res["images"].shape == (3, 16, 16, 1)
    if opts.get("guidance") == "online_patch": assert res["prototype_maps"].shape == (3, 16)

def backbones_equal(a, b):
    sa, sb = load_run(a, ema=False)[0].state_dict(), load_run(b, ema=False)[0].state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith("bootstrap.")), all(torch.equal(sa[k], sb[k]) for k in sa)

@pytest.mark.parametrize("stopgrad", [True, False])
@pytest.mark.parametrize("mask", [False, True])                          # auto: 'ema' or 'online'; 'tap'
def test_stop_gradient_keeps_the_backbone_out_of_the_sk_loss(tmp_path, stopgrad, mask):
    # the same two steps with SK weights (0, 0.56) and (1, 1): with stop-gradient the backbones stay identical
    kw = dict(SMALL, sk_stopgrad=stopgrad, steps=2, sk_sigma=0.9, sk_mask=mask, batch_size=32)
    a = train(**kw, out_dir=str(tmp_path / "a"))
    b = train(**{**kw, "sk_warmup_weight": False}, out_dir=str(tmp_path / "b"))
    backbone, everything = backbones_equal(a, b)
    assert backbone == stopgrad and not everything                       # the head differs in both cases

PAPER = dict(SMALL, sk_mask=True, feature_readout="token", feature_t=0.2, batch_size=32)

def _equal(a, b): return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())

def _states(run):
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    return ck["model"], ck["ema"], ck["sk_losses"]

@pytest.mark.parametrize("cfg,sources", [(SMALL, ("ema", "online")), (PAPER, ("tap", "online", "ema"))])
def test_every_sk_features_source_trains_the_same_warm_up(tmp_path, cfg, sources):
    # in warm-up the training condition is 0 and the EMA copies the network: tap, ema and online read the same rows
    runs = {s: _states(train(**cfg, steps=3, sk_sigma=0.9, sk_features=s, out_dir=str(tmp_path / s))) for s in sources}
    (ma, ea, la), *rest = runs.values()
    for mb, eb, lb in rest:
        assert la == lb and _equal(ma, mb) and _equal(ea, eb)

@pytest.mark.parametrize("cfg", [SMALL, PAPER])
def test_sk_features_resume_exactly_across_the_end_of_warm_up(tmp_path, cfg, monkeypatch):
    # the default source (ema without the mask, tap with it): stopped after step 2's checkpoint, resumed past step 3
    from selfguide.train import StepBatchSampler
    straight = train(**cfg, steps=6, out_dir=str(tmp_path / "a"))
    real = StepBatchSampler.__iter__
    def crash_at_2(self):
        for step, batch in zip(range(self.start, self.stop), real(self)):
            if step == 2: raise RuntimeError("simulated crash")
            yield batch
    monkeypatch.setattr(StepBatchSampler, "__iter__", crash_at_2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(**cfg, steps=6, ckpt_every=2, out_dir=str(tmp_path / "b"))
    monkeypatch.setattr(StepBatchSampler, "__iter__", real)
    resumed = train(**cfg, steps=6, ckpt_every=2, out_dir=str(tmp_path / "b"))
    (ma, ea, la), (mb, eb, lb) = _states(straight), _states(resumed)
    assert la == lb and _equal(ma, mb) and _equal(ea, eb)

def test_sk_features_are_checked(tmp_path):
    with pytest.raises(ValueError, match="sk_features must be"): TrainConfig(sk_features="cls")
    with pytest.raises(ValueError, match="sk_mask=True"):
        train(**SMALL, steps=1, sk_features="tap", out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no gradient"):
        train(**SMALL, steps=1, sk_features="ema", sk_stopgrad=False, out_dir=str(tmp_path))

def test_cli_prototype_and_query(run, tmp_path):
    main(["sample", "--run", str(run), "--n", "4", "--solver", "euler", "--steps", "2", "--prototype", "4", "--out", str(tmp_path / "p.npz")])
    assert np.load(tmp_path / "p.npz")["labels"].tolist() == [4] * 4
    with pytest.raises(ValueError, match=r"\[0, 4\]"): sample_run(run, 2, prototype=5)
    with pytest.raises(FileNotFoundError, match="--query"): sample_run(run, 2, query=str(tmp_path / "none.png"))

def test_online_run_cannot_change_its_length_on_resume(run):
    with pytest.raises(ValueError, match="other settings"): train(**SMALL, steps=8, out_dir=str(run))

def test_bad_online_options_are_refused():
    with pytest.raises(ValueError, match="online_condition"): TrainConfig(online_condition="onehot")
    with pytest.raises(ValueError, match="sk_sigma"): TrainConfig(sk_sigma=1.0)

# --- the SK loss with the timestep mask: Sinkhorn on the whole batch (released code) or on the masked rows ---
import torch.nn as nn, torch.nn.functional as F
from selfguide.uvit import build_uvit
from selfguide.paths import get_path
from selfguide.sinkhorn import sinkhorn, sk_loss
from selfguide.online import build_bootstrap, sk_views, sk_codes, sk_objective, MAX_HEAD_PARAMS

def tiny(patch=False, k=5, seed=0):
    torch.manual_seed(seed)
    net = build_uvit("tiny", img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, cond_dim=16)
    return net, build_bootstrap(net, "online_patch" if patch else "online", k=k, readout="mean", hidden=32, dim=16)

def batch(n=64):
    return torch.randn(n, 1, 16, 16), torch.rand(n) * 0.5, torch.randn(n, 1, 16, 16)  # x0, t (~20% masked), noise

def former_sk_loss(boot, model, x0, t, noise, two_view, generator, form):
    "The implementation before sinkhorn_rows existed: views of the masked rows only, mean over them"
    keep = (t >= 0.15) & (t <= 0.25)
    x0, t, first, cv = x0[keep], t[keep], noise[keep], get_path("cv")
    xs = [cv.x_t(x0, first, t)] + ([cv.x_t(x0, torch.randn(x0.shape, generator=generator), t)] if two_view else [])
    with torch.no_grad(): fs = [boot.feature(model, x, t) for x in xs]
    zs, protos = [boot.head(f) for f in fs], boot.protos()
    codes = [sinkhorn(z.detach() @ protos.detach().T) for z in zs]
    if len(zs) == 1: return sk_loss(zs[0], protos, codes[0], 0.1, form)
    return (sk_loss(zs[0], protos, codes[1], 0.1, form) + sk_loss(zs[1], protos, codes[0], 0.1, form)) / 2

# sk_objective with sinkhorn_rows='masked', same seeds: (loss, sum |grad| of head.net[0]); saved at 802bc34 and saved
# again when the head's Linear before its BatchNorm lost its bias (a null direction); former_sk_loss checks bit for bit
FORMER = {(False, False, 'ce'): (0.9222468137741089, 61.355159759521484),
          (False, False, 'frobenius'): (-0.174385666847229, 11.196029663085938),
          (False, True, 'ce'): (1.1691371202468872, 58.381343841552734),
          (False, True, 'frobenius'): (-0.1475645899772644, 8.949272155761719),
          (True, False, 'ce'): (0.885804295539856, 27.62055015563965),
          (True, False, 'frobenius'): (-0.1923319548368454, 5.905316352844238),
          (True, True, 'ce'): (1.0120097398757935, 23.94940757751465),
          (True, True, 'frobenius'): (-0.18178153038024902, 5.6268630027771)}


@pytest.mark.parametrize("patch,two_view,form", list(FORMER))
def test_masked_rows_reproduce_the_former_sk_loss(patch, two_view, form):
    net, boot = tiny(patch)
    x0, t, noise = batch()
    gen = torch.Generator().manual_seed(3)
    views = sk_views(x0, t, noise, "cv", two_view=two_view, generator=gen, sinkhorn_rows="masked")
    loss = sk_objective(boot, net, views, form=form)
    loss.backward()
    got = (loss.item(), boot.head.net[0].weight.grad.abs().sum().item())
    assert got == pytest.approx(FORMER[patch, two_view, form], rel=1e-5)  # the numbers saved before the change
    net2, boot2 = tiny(patch)
    old = former_sk_loss(boot2, net2, x0, t, noise, two_view, torch.Generator().manual_seed(3), form)
    assert torch.equal(loss, old)                                        # and bit for bit the former code

@pytest.mark.parametrize("patch", [False, True])
def test_batch_rows_sinkhorn_on_all_rows_loss_on_masked_rows(patch):
    net, boot = tiny(patch)
    x0, t, noise = batch()
    keep = (t >= 0.15) & (t <= 0.25)
    views = sk_views(x0, t, noise, "cv")
    (xv, tv, kv), = views
    assert torch.equal(tv, t) and torch.equal(kv, keep) and torch.allclose(xv, get_path("cv").x_t(x0, noise, t))
    (z, q, krows), = sk_codes(boot, net, views, n_iters=50)
    rows = 64 * (16 if patch else 1)
    assert q.shape == (rows, 5) and torch.allclose(q.sum(0), torch.full((5,), rows / 5), rtol=1e-3)  # all rows
    assert torch.allclose(q.sum(1), torch.ones(rows), atol=1e-5)
    assert torch.equal(krows, keep.repeat_interleave(rows // 64))
    (z, q, krows), = sk_codes(boot, net, views)                          # the default 3 iterations
    ce = -(q * F.log_softmax(boot.scores(z) / 0.1, 1)).sum(1)            # (R,)
    loss = sk_objective(boot, net, views)
    assert torch.allclose(loss, ce[krows].sum() / rows, atol=1e-6)       # released: (loss * mask).mean()
    two = sk_objective(boot, net, sk_views(x0, t, noise, "cv", two_view=True, generator=torch.Generator()))
    assert two is not None and two.requires_grad

def test_batch_rows_without_masked_rows_give_a_zero_loss_that_reaches_the_head():
    net, boot = tiny()
    x0, _, noise = batch()
    t = torch.full((64,), 0.6)                                           # no image in [0.15, 0.25]
    assert sk_objective(boot, net, sk_views(x0, t, noise, "cv", sinkhorn_rows="masked")) is None
    loss = sk_objective(boot, net, sk_views(x0, t, noise, "cv"))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()                                                      # every rank's head joins the all-reduce
    assert boot.head.net[0].weight.grad is not None and boot.protos.weight.grad.abs().sum() == 0
    assert sk_objective(boot, net, sk_views(x0[:1], t[:1], noise[:1], "cv")) is None  # one row: no Sinkhorn problem

def test_batch_rows_keep_the_stop_gradient():
    net, boot = tiny()
    x0, t, noise = batch()
    sk_objective(boot, net, sk_views(x0, t, noise, "cv")).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in net.parameters())
    assert boot.head.net[0].weight.grad.abs().sum() > 0 and boot.protos.weight.grad.abs().sum() > 0
    sk_objective(boot, net, sk_views(x0, t, noise, "cv"), stopgrad=False).backward()
    assert sum(p.grad.abs().sum() for p in net.parameters() if p.grad is not None) > 0  # without it, it does

class Carrier(nn.Module):  # its feature of an image (d, 1, 1) is the image itself
    num_blocks, embed_dim, num_patches = 3, 128, 1
    def features(self, x, t, layer, c=None, drop=None): return dict(token=x.flatten(1))

class Normalize(nn.Module):
    def forward(self, f): return F.normalize(f, dim=1)

def test_batch_rows_give_confident_codes_where_masked_rows_are_capped_at_b_over_k():
    torch.manual_seed(0)
    n, k = 512, 300                                                      # the paper's batch and ImageNet-100's K
    M, t = F.normalize(torch.randn(k, 128), dim=1), torch.rand(n)
    z = M[torch.randint(k, (n,))] + torch.randn(n, 128) / 128 ** 0.5     # a head that has found clusters
    boot = build_bootstrap(Carrier(), "online", k=k, readout="token", dim=128)
    boot.head, boot.protos.weight.data = Normalize(), M
    x = z[..., None, None]                                               # zero noise: x_t = (1 - t) z, normalised z
    top = {}
    for rows in ("batch", "masked"):
        (_, q, keep), = sk_codes(boot, Carrier(), sk_views(x, t, torch.zeros_like(x), "cv", sinkhorn_rows=rows))
        top[rows] = (q if keep is None else q[keep]).max(1).values.mean().item()
    b = int(((t >= 0.15) & (t <= 0.25)).sum())
    assert top["masked"] <= b / k + 1e-3 and top["batch"] > 0.6 and top["batch"] > 4 * top["masked"]

def test_sinkhorn_rows_is_checked():
    with pytest.raises(ValueError, match="sinkhorn_rows"): sk_views(*batch(4), "cv", sinkhorn_rows="all")

class Sizes:  # only what build_bootstrap reads
    def __init__(self, n, d): self.num_blocks, self.num_patches, self.embed_dim = 21, n, d

def test_head_size_guard_refuses_all_patch_tokens_at_paper_scale():
    for n, d in ((16, 128), (49, 128)):                                  # digits, Fashion-MNIST: 1M, 3.2M weights
        assert build_bootstrap(Sizes(n, d), "online", k=10, readout="patches").head.net[0].in_features == n * d
    with pytest.raises(ValueError, match=r"--feature-readout token .* or mean") as e:
        build_bootstrap(Sizes(256, 1024), "online", k=300, readout="patches")  # 134M weights
    assert "134M" in str(e.value) and "\n" not in str(e.value) and 256 * 1024 * 512 > MAX_HEAD_PARAMS
    assert build_bootstrap(Sizes(256, 1024), "online", k=300, readout="token").head.net[0].in_features == 1024
    assert build_bootstrap(Sizes(256, 1024), "online_patch", k=300, readout="patches").patch  # per patch: 1024 wide

def _rank(rank, init_file, out_file):
    import datetime, torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    net, boot = tiny()
    x0, t, noise = batch(32)
    if rank == 1: t = torch.full((32,), 0.6)                             # this process has no masked image
    views = sk_views(x0, t, noise, "cv")
    (_, q, _), = sk_codes(boot, net, views, n_iters=50)                  # Sinkhorn all-reduces across both processes
    loss = sk_objective(boot, net, views)
    torch.save(dict(colsum=q.sum(0), loss=loss.item(), grad=loss.requires_grad), f"{out_file}.{rank}")
    dist.destroy_process_group()

def test_batch_rows_join_sinkhorn_on_every_process(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"out.{r}") for r in range(2))
    assert torch.allclose(r0["colsum"] + r1["colsum"], torch.full((5,), 64 / 5), rtol=1e-3)  # one problem of 64 rows
    assert r0["loss"] > 0 and r1["loss"] == 0.0 and r1["grad"]
