"""Each online option does what it exists for: an option the trainer silently ignored would fail here.

`test_online.py::test_every_option_trains_and_samples` shows every option trains; these tests show each one changes
what it should: the condition path (online_condition), the SK rows (sk_mask, sk_sinkhorn, sk_features, sk_two_view),
the gradient (sk_stopgrad), the SK weight (sk_warmup_weight), where the features are read (feature_readout,
feature_layer, feature_t) and the loss (sk_form, sk_temperature, sk_epsilon, sk_iters). amortise: test_amortise.py.
"""
import pytest, torch
import torch.nn.functional as F
import selfguide.train as train_mod
from selfguide.config import TrainConfig
from selfguide.online import Bootstrap, SK_MASK, assign, assign_rows, sk_codes, sk_objective, sk_views
from selfguide.paths import get_path
from selfguide.sinkhorn import sk_loss
from selfguide.train import build_model, step_inputs, train
from selfguide.uvit import UViT

SMALL = dict(dataset="digits", guidance="online", preset="tiny", patch_size=4, batch_size=16, lr=1e-3, warmup_steps=2,
             ema_decay=0.9, clusters=5, sk_hidden=32, sk_dim=8, monitor_images=64, sk_mask=False)
SHAPE = (1, 16, 16)                                                      # digits: 1 x 16 x 16, 16 patches of 4 x 4

def model_for(**kw):
    "The U-ViT and `Bootstrap` the trainer builds for SMALL with `kw` (tiny preset: width 128, 7 blocks)"
    torch.manual_seed(0)
    cfg = TrainConfig(**{**SMALL, **kw})
    return build_model(cfg, SHAPE, 0), cfg

def images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randn(n, *SHAPE, generator=g)  # x0, noise

def band(t): return (t >= SK_MASK[0]) & (t <= SK_MASK[1])

@pytest.fixture
def in_step(monkeypatch):
    "A function that says whether the trainer is in a training step now (False inside its prototype monitor)"
    state, real = dict(monitor=False), train_mod.monitor_stats
    def monitor(*a, **kw):
        state["monitor"] = True
        try: return real(*a, **kw)
        finally: state["monitor"] = False
    monkeypatch.setattr(train_mod, "monitor_stats", monitor)
    return lambda: not state["monitor"]

# --- online_condition: 'vector' feeds prototype vectors through cond_proj, 'index' integer ids through label_emb ---

@pytest.mark.parametrize("kind", ["vector", "index"])
def test_online_condition_picks_the_condition_path(kind):
    m, _ = model_for(online_condition=kind)
    boot = m.bootstrap
    assert boot.kind == kind and boot.protos.weight.shape == (5, 8) and boot.head.net[0].out_features == 32
    ids, drop = torch.tensor([0, 3, 3, 1]), torch.tensor([False, False, False, True])
    c = boot.condition(ids)
    if kind == "index":
        assert m.cond_proj is None and m.label_emb.num_embeddings == 5 and torch.equal(c, ids)
    else:
        assert m.label_emb is None and m.cond_proj.in_features == 8 and c.dtype == torch.float32
        assert torch.equal(c, boot.protos().detach()[ids]) and not c.requires_grad
    x0, _ = images(4)
    m(x0, torch.rand(4), c, drop).square().sum().backward()
    if kind == "index":                                                  # the rows of the ids not dropped, no other
        used = m.label_emb.weight.grad.abs().sum(1) > 0
        assert used.tolist() == [True, False, False, True, False]
    else:
        assert m.cond_proj.weight.grad.abs().sum() > 0
    assert m.null_emb.grad.abs().sum() > 0                               # the dropped row reads the null

@pytest.mark.parametrize("kind", ["vector", "index"])
def test_the_trainer_feeds_the_chosen_condition_after_warm_up(tmp_path, monkeypatch, in_step, kind):
    seen, real = [], UViT.embed_condition
    def spy(self, c):
        if in_step(): seen.append((c.dtype, tuple(c.shape)))
        return real(self, c)
    monkeypatch.setattr(UViT, "embed_condition", spy)
    train(**SMALL, online_condition=kind, steps=4, out_dir=str(tmp_path / kind))  # warm-up: steps 0, 1 (sigma 0.5)
    want = (torch.int64, (16,)) if kind == "index" else (torch.float32, (16, 8))
    assert seen == [want, want]                                          # steps 2 and 3: m* of each image

# --- sk_mask, sk_sinkhorn, feature_t: which rows the SK loss reads, at which time ---

def test_the_timestep_mask_selects_the_band_of_the_training_rows():
    path, x0, y = get_path("cv"), images()[0], torch.zeros(64, dtype=torch.long)
    def step(**kw):
        cfg = TrainConfig(**{**SMALL, "batch_size": 64, **kw})
        return step_inputs(x0, y, torch.Generator().manual_seed(1), cfg, path, slice(0, 64))
    _, noise, t, _, _, _, [(x_t, tv, keep)] = step(sk_mask=True)
    assert 0 < band(t).sum() < 64 and torch.equal(tv, t) and torch.equal(keep, band(t))  # every row, the band kept
    assert torch.equal(x_t, path.x_t(x0, noise, t))                      # the training forward's own x_t
    _, noise, t, _, _, _, [(x_t, tv, keep)] = step(sk_mask=True, sk_sinkhorn="masked")
    assert keep is None and torch.equal(tv, t[band(t)]) and torch.equal(x_t, path.x_t(x0, noise, t)[band(t)])
    _, noise, t, _, _, _, [(x_t, tv, keep)] = step(sk_mask=False, feature_t=0.3)
    assert keep is None and (tv == 0.3).all()                            # every image, noised afresh at feature_t
    assert not torch.allclose(x_t, path.x_t(x0, noise, tv))

def test_the_sk_loss_reaches_only_rows_in_the_band():
    m, _ = model_for(feature_readout="mean")
    boot = m.bootstrap.eval()                                            # BatchNorm on running statistics: rows apart
    x0, noise = images()
    t = torch.rand(64) * 0.5
    t[:4] = torch.tensor([0.15, 0.25, 0.1499, 0.2501])                   # the band's edges, in and out
    rows = torch.randn(64, 128, requires_grad=True)                       # feature rows, as the 'tap' source gives
    sk_objective(boot, m, sk_views(x0, t, noise, "cv"), stopgrad=False, feats=[rows]).backward()
    assert torch.equal(rows.grad.abs().sum(1) > 0, band(t)) and band(t)[:4].tolist() == [True, True, False, False]

@pytest.mark.parametrize("rows", ["batch", "masked"])
def test_sinkhorn_rows_decide_whether_rows_outside_the_band_shape_the_codes(rows):
    m, _ = model_for(feature_readout="mean")
    boot = m.bootstrap.eval()
    x0, noise = images()
    t = torch.rand(64) * 0.5
    out = ~band(t)
    x1 = x0.clone(); x1[out] = torch.randn(int(out.sum()), *SHAPE)         # other images outside the band
    with torch.no_grad():
        a, b = (sk_objective(boot, m, sk_views(x, t, noise, "cv", sinkhorn_rows=rows)) for x in (x0, x1))
    assert (a == b) == (rows == "masked")                                # 'batch': Sinkhorn over all rows

def test_feature_t_is_the_time_m_star_reads(monkeypatch):
    m, _ = model_for(feature_t=0.3)
    boot, seen, real = m.bootstrap, [], Bootstrap.feature
    assert boot.t_s == 0.3
    x0, noise = images(8)
    monkeypatch.setattr(Bootstrap, "feature", lambda self, model, x, t: seen.append(t) or real(self, model, x, t))
    ids = assign(boot, m, x0, noise=noise)
    assert len(seen) == 1 and (seen[0] == 0.3).all()
    t = torch.full((8,), 0.3)
    assert torch.equal(ids, assign_rows(boot, real(boot, m, get_path("cv").x_t(x0, noise, t), t), 8))

# --- sk_features: the pass the SK rows come from (the training forward's tap, the EMA, or a pass of its own) ---

@pytest.mark.parametrize("source", ["tap", "ema", "online"])
def test_sk_features_reads_the_chosen_pass(tmp_path, monkeypatch, in_step, source):
    feature, forward, seen = Bootstrap.feature, UViT.forward, dict(feature=[], tap=[])
    def spy_feature(self, model, x, t):
        if in_step(): seen["feature"].append((model.training, torch.is_grad_enabled()))
        return feature(self, model, x, t)
    def spy_forward(self, x, t, c=None, drop=None, tap=None):
        if in_step(): seen["tap"].append(tap)
        return forward(self, x, t, c, drop, tap)
    monkeypatch.setattr(Bootstrap, "feature", spy_feature); monkeypatch.setattr(UViT, "forward", spy_forward)
    kw = dict(SMALL, sk_mask=True, feature_readout="token", batch_size=32, sk_sigma=0.9, feature_layer=1)
    train(**kw, steps=2, sk_features=source, out_dir=str(tmp_path / source))  # warm-up only: no m* pass
    want = dict(tap=[], ema=[(False, False)] * 2, online=[(True, False)] * 2)[source]  # EMA: eval; own: the trained net
    assert seen["feature"] == want
    assert seen["tap"] == ([1, 1] if source == "tap" else [None, None])  # the training forward, tapped at block 1

# --- sk_two_view: two noisings of each image, each predicts the other's codes (SwAV) ---

def test_two_views_predict_each_others_codes():
    m, _ = model_for(feature_readout="mean")
    boot, path = m.bootstrap.eval(), get_path("cv")
    x0, y = images()[0], torch.zeros(64, dtype=torch.long)
    cfg = TrainConfig(**{**SMALL, "batch_size": 64, "sk_mask": True, "sk_two_view": True})
    _, noise, t, *_, views = step_inputs(x0, y, torch.Generator().manual_seed(1), cfg, path, slice(0, 64))
    (xa, ta, ka), (xb, tb, kb) = views
    assert torch.equal(ta, t) and torch.equal(tb, t) and torch.equal(ka, band(t)) and torch.equal(kb, ka)
    assert torch.equal(xa, path.x_t(x0, noise, t)) and not torch.allclose(xa, xb)  # the training x_t, another noise
    with torch.no_grad():
        (za, qa, k), (zb, qb, _) = sk_codes(boot, m, views)
        loss = lambda z, q: sk_loss(z, boot.protos(), q * k[:, None])
        got = sk_objective(boot, m, views)
    assert torch.allclose(got, (loss(za, qb) + loss(zb, qa)) / 2)        # swapped
    assert not torch.allclose(got, (loss(za, qa) + loss(zb, qb)) / 2)

# --- sk_stopgrad: the SK loss trains the head and prototypes only ---

@pytest.mark.parametrize("stopgrad", [True, False])
def test_stop_gradient_gives_the_backbone_no_gradient_from_the_tapped_rows(stopgrad):
    m, _ = model_for(feature_readout="token", sk_mask=True)
    boot = m.bootstrap
    x0, noise = images(32)
    t = torch.rand(32) * 0.5
    views = sk_views(x0, t, noise, "cv")
    _, f = m(views[0][0], t, tap=boot.layer)                             # the training forward's block-l rows
    sk_objective(boot, m, views, stopgrad=stopgrad, feats=[boot.rows(f)]).backward()
    backbone = sum(p.grad.abs().sum() for n, p in m.named_parameters()
                   if not n.startswith("bootstrap.") and p.grad is not None)
    assert (backbone == 0) == stopgrad and boot.head.net[0].weight.grad.abs().sum() > 0

# --- sk_warmup_weight, sk_form, sk_temperature, sk_epsilon, sk_iters: what the trainer hands the SK loss ---

@pytest.mark.parametrize("opts,weights", [(dict(), [0.0, 0.5, 1.0, 1.0]),
                                          (dict(sk_warmup_weight=False, sk_form="frobenius", sk_temperature=0.2,
                                                sk_epsilon=0.1, sk_iters=5, sk_stopgrad=False), [1.0] * 4)])
def test_the_trainer_weighs_and_configures_the_sk_loss(tmp_path, monkeypatch, opts, weights):
    calls, grads, real = [], [], train_mod.sk_objective
    def spy(boot, net, views, **kw):
        calls.append({k: kw[k] for k in ("stopgrad", "epsilon", "n_iters", "temperature", "form")})
        loss = real(boot, net, views, **kw)
        loss.register_hook(lambda g: grads.append(g.item()))              # d total / d SK loss: the weight used
        return loss
    monkeypatch.setattr(train_mod, "sk_objective", spy)
    cfg = TrainConfig(**{**SMALL, **opts})
    train(**SMALL, **opts, steps=4, out_dir=str(tmp_path / "r"))        # sigma 0.5: weight min(step / 2, 1)
    want = dict(stopgrad=cfg.sk_stopgrad, epsilon=cfg.sk_epsilon, n_iters=cfg.sk_iters, temperature=cfg.sk_temperature,
                form=cfg.sk_form)
    assert calls == [want] * 4 and grads == pytest.approx(weights, abs=1e-7)

@pytest.mark.parametrize("form", ["ce", "frobenius"])
def test_sk_form_and_temperature_are_the_loss(form):
    m, _ = model_for(feature_readout="mean")
    boot = m.bootstrap.eval()
    x0, noise = images()
    views = sk_views(x0, torch.full((64,), 0.2), noise, "cv")             # every row in the band
    with torch.no_grad():
        (z, q, _), = sk_codes(boot, m, views, epsilon=0.1, n_iters=5)
        s = z @ boot.protos().T                                          # (R, K) cosine similarities
        want = -(q * F.log_softmax(s / 0.3, 1)).sum(1).mean() if form == "ce" else -(q * s).sum(1).mean()
        got = sk_objective(boot, m, views, epsilon=0.1, n_iters=5, temperature=0.3, form=form)
        other = sk_objective(boot, m, views, epsilon=0.1, n_iters=5, temperature=0.3,
                             form="frobenius" if form == "ce" else "ce")
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, other)

# --- feature_readout: token reads the [CLS] row, mean the mean patch token, patches all patch tokens ---

def test_the_cls_readout_reads_the_cls_row():
    m, _ = model_for(feature_readout="token")
    assert m.cls_token is not None and m.extras == 3                     # time, condition, [CLS], then 16 patches
    assert model_for(feature_readout="mean")[0].cls_token is None
    h = torch.randn(2, 3 + 16, 128)
    base = m.readouts(h)
    def change(row):
        g = h.clone(); g[:, row] += 1.0
        return {k: not torch.equal(v, base[k]) for k, v in m.readouts(g).items()}
    assert change(2) == dict(token=True, mean=False, patches=False)      # the [CLS] row: the token readout only
    assert change(3 + 5) == dict(token=False, mean=True, patches=True)   # a patch token: not the token readout
    assert change(0) == change(1) == dict(token=False, mean=False, patches=False)  # time and condition rows: none
    assert torch.equal(base["token"], h[:, 2]) and torch.equal(base["patches"], h[:, 3:])

@pytest.mark.parametrize("readout,width", [("token", 128), ("mean", 128), ("patches", 16 * 128)])
def test_the_bootstrap_clusters_its_readout(readout, width):
    m, _ = model_for(feature_readout=readout)
    boot = m.bootstrap
    x, t = images(4)[0], torch.full((4,), 0.2)
    f = m.features(x, t, boot.layer)
    assert boot.head.net[0].in_features == width
    assert torch.equal(boot.feature(m, x, t), f[readout].flatten(1))    # (B, width)
    p, _ = model_for(guidance="online_patch", feature_readout=readout)
    assert torch.equal(p.bootstrap.rows(f), f["patches"].flatten(0, 1))  # per patch: (B * N, D), whatever the readout

# --- feature_layer: which block's output is read ---

@pytest.mark.parametrize("layer", [None, 0, 2, 6])
def test_feature_layer_reads_that_block_and_runs_no_later_one(layer):
    m, _ = model_for(feature_readout="mean", feature_layer=layer)
    boot, blocks = m.bootstrap, [*m.in_blocks, m.mid_block, *m.out_blocks]
    assert boot.layer == (3 if layer is None else layer)                 # None: the middle block of 7
    ran = []
    hooks = [b.register_forward_hook(lambda mod, a, out, i=i: ran.append((i, out))) for i, b in enumerate(blocks)]
    x, t = images(4)[0], torch.rand(4)
    try:
        with torch.no_grad():
            f = boot.feature(m, x, t); n_feature = len(ran)
            _, tapped = m(x, t, tap=boot.layer)                          # the 'tap' source: the training forward
    finally:
        for h in hooks: h.remove()
    assert [i for i, _ in ran[:n_feature]] == list(range(boot.layer + 1))  # blocks 0..l, then no more
    out = ran[boot.layer][1]
    assert torch.equal(f, out[:, m.extras:].mean(1)) and torch.allclose(tapped["mean"], f)
    assert len(ran) == n_feature + len(blocks)

# --- guidance='online_patch': one prototype per patch, added to that patch's token ---

def test_patch_conditions_reach_only_their_patch():
    m, _ = model_for(guidance="online_patch", feature_readout="mean")
    boot = m.bootstrap
    x0, noise = images(4)
    ids = assign(boot, m, x0, noise=noise)
    assert ids.shape == (4, 16) and boot.condition(ids).shape == (4, 16, 8)
    c = boot.condition(ids)
    c2 = c.clone(); c2[:, 5] = boot.condition(torch.full((4,), (ids[0, 5].item() + 1) % 5))
    t = torch.rand(4)
    with torch.no_grad():
        changed = (m.tokens(x0, t, c2) != m.tokens(x0, t, c)).any(2).any(0)  # (extras + N,)
    assert changed.nonzero()[:, 0].tolist() == [m.extras + 5]
