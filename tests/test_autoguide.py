import pytest, torch
from selfguide.uvit import build_uvit
from selfguide.sample import sample, cfg_velocity, check_guide, rank_chunks, merge_results, prior_noise
from selfguide.paths import get_path

class Const(torch.nn.Module):
    "Stand-in velocity: `cond` where c is given and not dropped, `null` where dropped, `none` for c=None; records c"
    def __init__(self, cond, null=0.0, none=0.0, classes=3, dim=0, size=8):
        super().__init__(); self.cond, self.null, self.none, self.seen = cond, null, none, []
        self.in_chans, self.img_size, self.num_classes, self.cond_dim = 1, size, classes, dim
        self.dummy = torch.nn.Parameter(torch.zeros(()))
    def forward(self, x, t, c=None, drop=None):
        self.seen.append(c)
        if c is None: return torch.full_like(x, self.none)
        keep = torch.ones(len(x), dtype=torch.bool) if drop is None else ~drop
        return torch.where(keep[:, None, None, None], self.cond, self.null).expand_as(x).clone()

class Linear(torch.nn.Module):
    "Stand-in velocity a x, unconditional"
    def __init__(self, a):
        super().__init__(); self.a, self.in_chans, self.img_size, self.num_classes, self.cond_dim = a, 1, 4, 0, 0
        self.dummy = torch.nn.Parameter(torch.zeros(()))
    def forward(self, x, t, c=None, drop=None): return self.a * x

@pytest.mark.parametrize("g,G", [(0.0, 0.0), (0.4, 0.0), (0.0, 1.0), (0.5, 2.0), (1.5, 0.25)])
def test_combined_guidance_formula_by_hand(g, G):
    main, guide = Const(3.0, null=1.0), Const(2.0)      # v(c) = 3, v(null) = 1, v_guide(c) = 2
    x, t, c = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 0])
    # v(c) + g (v(c) - v(null)) + G (v(c) - v_guide(c)) = 3 + 2 g + G
    assert torch.allclose(cfg_velocity(main, x, t, c, g, guide, G, c), torch.full_like(x, 3 + 2 * g + G))
    if G: assert len(guide.seen) == 1 and torch.equal(guide.seen[0], c)  # one call, on the conditional branch only
    else: assert guide.seen == []

def test_autoguidance_alone_without_a_condition():
    main, guide = Const(3.0, none=0.5), Const(2.0, none=-1.0)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert torch.allclose(cfg_velocity(main, x, t, None, 0.4, guide, 2.0), torch.full_like(x, 0.5 + 2.0 * 1.5))

@pytest.mark.parametrize("solver,steps", [("euler", 4), ("euler", 7)])
@pytest.mark.parametrize("G", [0.0, 0.5, 1.0])
def test_linear_fields_integrate_as_computed_by_hand(solver, steps, G):
    # main 2x, guide x: the guided field is (2 + G) x; N Euler steps from t = 1 give x_1 (1 - (2 + G) / N)^N
    x1 = prior_noise(get_path("cv"), (1, 4, 4), 0, range(5))[0]
    r = sample(Linear(2.0), 5, solver=solver, steps=steps, autoguide=Linear(1.0), autoguide_g=G)
    assert torch.allclose(r.x, x1 * (1 - (2 + G) / steps) ** steps, atol=1e-6)
    assert (r.nfe, r.nfe_guide) == (steps, steps if G else 0)

@pytest.mark.parametrize("solver", ["rk4", "dpm_solver", "unipc", "euler_maruyama"])
def test_nfe_and_nfe_guide_are_counted_apart(solver):
    r = sample(Linear(2.0), 3, solver=solver, steps=5, autoguide=Linear(1.0), autoguide_g=1.0)
    per = 4 if solver == "rk4" else 1
    assert r.nfe == r.nfe_guide == 5 * per and r.chunk_nfe_guide == [5 * per]
    main, guide, seen = Linear(2.0), Linear(1.0), dict(main=0, guide=0)  # adaptive: the calls, counted
    main.register_forward_pre_hook(lambda *_: seen.update(main=seen["main"] + 1))
    guide.register_forward_pre_hook(lambda *_: seen.update(guide=seen["guide"] + 1))
    r = sample(main, 3, solver="dopri5", rtol=1e-3, atol=1e-3, autoguide=guide, autoguide_g=1.0)
    assert (r.nfe, r.nfe_guide) == (seen["main"], seen["guide"]) and seen["main"] == seen["guide"] >= 6

@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    kw = dict(img_size=8, patch_size=2, in_chans=1, depth=2, num_heads=2)
    return dict(cls=build_uvit("tiny", embed_dim=32, num_classes=3, **kw).eval(),
                weak_cls=build_uvit("nano", embed_dim=16, num_classes=3, **kw).eval(),
                vec=build_uvit("tiny", embed_dim=32, cond_dim=16, **kw).eval(),
                weak_vec=build_uvit("nano", embed_dim=16, cond_dim=16, **kw).eval(),
                uncond=build_uvit("nano", embed_dim=16, **kw).eval(),
                big=build_uvit("nano", embed_dim=16, **{**kw, "img_size": 16}).eval())

def test_an_earlier_version_gets_the_same_condition(models):
    c = torch.tensor([0, 1, 2, 0])
    assert check_guide(models["cls"], models["weak_cls"], c)
    assert check_guide(models["vec"], models["weak_vec"], torch.randn(4, 16))       # online: prototype vectors
    assert check_guide(models["vec"], models["weak_vec"], torch.randn(4, 16, 16))   # per-patch vectors, same grid

def test_a_guide_without_condition_slot_gets_none(models):
    seen = []
    guide = models["uncond"]
    hook = guide.register_forward_pre_hook(lambda m, a, k: seen.append(a[2] if len(a) > 2 else k.get("c")),
                                           with_kwargs=True)
    try:
        c = torch.randn(3, 16)                                              # an online run's prototype vectors
        assert check_guide(models["vec"], guide, c) is False
        r = sample(models["vec"], 3, c=c, g=0.4, solver="euler", steps=2, autoguide=guide, autoguide_g=1.0)
    finally: hook.remove()
    assert r.nfe == r.nfe_guide == 2 and seen == [None, None]
    assert not torch.equal(r.x, sample(models["vec"], 3, c=c, g=0.4, solver="euler", steps=2).x)  # it did guide

def test_unfit_guides_fail_with_one_clear_error(models):
    with pytest.raises(ValueError, match="1 channels at 16 px, the model 1 at 8"):
        sample(models["cls"], 2, solver="euler", steps=2, autoguide=models["big"])
    with pytest.raises(ValueError, match="ids of 3 classes"):
        sample(models["cls"], 2, c=torch.tensor([0, 1]), solver="euler", steps=2, autoguide=models["weak_vec"])
    with pytest.raises(ValueError, match="vectors of width 8"):
        check_guide(models["vec"], models["weak_vec"], torch.randn(2, 8))
    with pytest.raises(ValueError, match="per patch"):
        check_guide(models["vec"], build_uvit("nano", img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=2,
                                              num_heads=2, cond_dim=16), torch.randn(2, 16, 16))

@pytest.mark.parametrize("solver", ["euler", "dpm_solver", "dopri5"])
def test_autoguided_blocks_merge_into_the_one_call_result(models, solver):
    kw = dict(c=torch.arange(10) % 3, seed=1, solver=solver, steps=3, rtol=1e-3, atol=1e-3, batch_size=3,
              autoguide=models["weak_cls"], autoguide_g=1.5)
    whole = sample(models["cls"], 10, **kw)
    parts = [sample(models["cls"], 10, chunks=rank_chunks(10, 3, r, 2), **kw) for r in range(2)]
    merged = merge_results(parts)
    assert torch.equal(merged.x, whole.x) and (merged.nfe, merged.nfe_guide) == (whole.nfe, whole.nfe_guide)
    assert whole.nfe_guide == whole.nfe
    again = sample(models["cls"], 10, **kw)                                 # same seed, same samples
    assert torch.equal(again.x, whole.x)
