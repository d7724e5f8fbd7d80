import pytest, torch
from pathlib import Path
from selfguide.uvit import build_uvit, count_params, UViT

@pytest.mark.parametrize("size,patch,chans", [(16, 2, 1), (16, 4, 1), (28, 4, 1), (32, 2, 4)])
def test_output_shape(size, patch, chans):
    m = build_uvit("tiny", img_size=size, patch_size=patch, in_chans=chans, embed_dim=32, depth=2, num_heads=2)
    x = torch.randn(2, chans, size, size)
    assert m(x, torch.rand(2)).shape == x.shape

def test_uvit_l_parameter_count():
    with torch.device("meta"):
        n = count_params(build_uvit("uvit_l", num_classes=1001))
    assert abs(n - 287e6) / 287e6 < 0.02, n
    with torch.device("meta"):
        m = build_uvit("uvit_l")
    assert m.num_blocks == 21 and m.embed_dim == 1024

def test_feature_tap_matches_forward_path():
    torch.manual_seed(0)
    m = UViT(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=4, num_heads=2, use_cls_token=True).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    f = m.features(x, t, layer=2)                                   # mid block
    assert f["patches"].shape == (3, 16, 16) and f["token"].shape == (3, 16)
    assert torch.allclose(f["mean"], f["patches"].mean(1))
    with pytest.raises(ValueError, match="layer must be"): m.features(x, t, layer=5)

def test_condition_errors_are_clear():
    m = build_uvit("tiny", img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2)
    with pytest.raises(ValueError, match="num_classes"): m(torch.randn(1, 1, 8, 8), torch.rand(1), torch.tensor([3]))
    with pytest.raises(ValueError, match="multiple of patch_size"): build_uvit("tiny", img_size=10, patch_size=4)

TINY = dict(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=2)

def official_sd(model: UViT) -> dict:
    "`model`'s tensors in the official layout: [label, time, patches] positions, label table with the null row last"
    sd = {k.replace("patch_embed.", "patch_embed.proj."): v for k, v in model.state_dict().items()
          if k not in ("null_emb", "label_emb.weight")}
    if model.num_classes:
        sd["label_emb.weight"] = torch.cat([model.label_emb.weight, model.null_emb])
        sd["pos_embed"] = torch.cat([model.pos_embed[:, 1:2], model.pos_embed[:, :1], model.pos_embed[:, 2:]], 1)
    return sd

def test_official_checkpoint_file_loads(tmp_path):
    from selfguide.uvit import load_official
    torch.manual_seed(0)
    src = UViT(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=2, num_classes=3)
    sd = official_sd(src)
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "uvit.pth")
    m = load_official(tmp_path / "uvit.pth", num_heads=2, schedule="ddpm")
    assert (m.num_classes, m.num_blocks, m.in_chans, m.img_size) == (3, 5, 4, 8)
    assert torch.equal(m.null_emb, sd["label_emb.weight"][-1:]) and torch.equal(m.pos_embed, src.pos_embed)
    with pytest.raises(FileNotFoundError, match="checkpoint"): load_official(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="pass num_heads"): load_official(tmp_path / "uvit.pth")  # width 32: unknown

def test_official_heads_and_schedule_by_width():
    "U-ViT-H (1152 wide) has 16 heads of 72 channels, not 1152 // 64 = 18, and was trained on the DDPM schedule"
    from selfguide.uvit import from_official, official_heads, official_schedule
    assert [official_heads(w) for w in (512, 768, 1024, 1152)] == [8, 12, 16, 16]
    assert [official_schedule(w) for w in (512, 768, 1024, 1152)] == ["vp", "vp", "vp", "ddpm"]
    with torch.device("meta"):                                        # shapes only: no memory for 500M parameters
        h = from_official(official_sd(build_uvit("uvit_h", num_classes=1000)))
        l = from_official(official_sd(build_uvit("uvit_l", num_classes=1000)))
    assert (h.mid_block.attn.num_heads, h.depth, h.num_classes, h.time_scale) == (16, 28, 1000, 1000.0)  # n = 1000 t
    assert (l.mid_block.attn.num_heads, l.time_scale) == (16, 999.0)                                  # VP SDE: 999 t
    with pytest.raises(ValueError, match="pass num_heads"): official_heads(1000)

def test_cls_token_on_official_init_keeps_the_official_positions(tmp_path):
    from selfguide.uvit import load_official, transfer_state
    torch.manual_seed(0)
    src = UViT(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=2, num_classes=3)
    with torch.no_grad(): src.pos_embed.normal_()                     # positions that matter, as trained ones do
    torch.save(official_sd(src), tmp_path / "uvit.pth")
    ref = load_official(tmp_path / "uvit.pth", num_heads=2, schedule="ddpm")
    m = load_official(tmp_path / "uvit.pth", num_heads=2, schedule="ddpm", use_cls_token=True)
    assert m.extras == 3 and m.cls_token is not None
    assert torch.equal(m.pos_embed[:, :2], ref.pos_embed[:, :2])      # time and condition rows
    assert torch.equal(m.pos_embed[:, 3:], ref.pos_embed[:, 2:])      # patch rows
    assert torch.allclose(m.pos_embed[0, 2], ref.pos_embed[0, :2].mean(0))  # CLS row: mean of the non-patch rows
    assert torch.equal(m.in_blocks[0].attn.qkv.weight, ref.in_blocks[0].attn.qkv.weight)
    assert torch.equal(m.null_emb, ref.null_emb)
    x, t, drop = torch.randn(16, 4, 8, 8), torch.rand(16), torch.ones(16, dtype=torch.bool)
    with torch.no_grad():
        v, err = ref(x, t, drop=drop), (m(x, t, drop=drop) - ref(x, t, drop=drop)).norm()
        assert m.features(x, t, 2, drop=drop)["token"].shape == (16, 32)
        fresh = UViT(**{**TINY, "num_classes": 3}, use_cls_token=True)   # the same weights, position rows left random
        fresh.load_state_dict({k: v for k, v in m.state_dict().items() if k != "pos_embed"}, strict=False)
        assert err < 0.5 * (fresh(x, t, drop=drop) - v).norm()        # the mapped rows keep the official function
    un, dst = UViT(**TINY, cond_slot=False), UViT(**TINY, num_classes=7, use_cls_token=True)
    pos = transfer_state(un, dst)["pos_embed"]                        # unconditional source: cond, CLS rows = time row
    assert torch.equal(pos[0, 0], un.pos_embed[0, 0]) and torch.equal(pos[0, 1], un.pos_embed[0, 0])
    assert torch.equal(pos[:, 3:], un.pos_embed[:, 1:])

def previous_forward(m: UViT, x, t, c=None, drop=None):
    "The forward pass before the speed fix of issue 12: LayerNorm and decoder on the patch tokens sliced out first"
    h = m.blocks(m.tokens(x, t, c, drop))
    return m.final_layer(m.unpatchify(m.decoder_pred(m.norm(h)[:, m.extras:])))

@pytest.mark.parametrize("kw,cond", [(dict(num_classes=5), True), (dict(cond_slot=False), False),
                                     (dict(num_classes=5, use_cls_token=True, conv=True), True)])
def test_forward_and_gradients_equal_the_previous_implementation(kw, cond):
    torch.manual_seed(0)
    m = UViT(**TINY, **kw)
    x, t = torch.randn(6, 4, 8, 8), torch.rand(6)
    c, drop = (torch.randint(0, 5, (6,)), torch.tensor([True, False] * 3)) if cond else (None, None)
    outs, grads = [], []
    for f in (m.forward, lambda *a: previous_forward(m, *a)):
        m.zero_grad(); v = f(x, t, c, drop); (v * torch.linspace(-1, 1, v.numel()).view_as(v)).sum().backward()
        outs.append(v.detach()); grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert torch.allclose(outs[0], outs[1], atol=1e-6, rtol=0)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n, g in grads[0].items():  # relative to each gradient's scale: sums over more rows round differently
        assert (g - grads[1][n]).abs().max() <= 1e-6 * grads[1][n].abs().max(), n

# --- the official U-ViT-L/2 and U-ViT-H/2 latent models by their real names and shapes (benchmarks/official_keys.py
# built their libs/uvit.py from baofff/U-ViT's ImageNet256 configs and wrote these lists; no weights here) ---
DATA = Path(__file__).parent / "data"

def official_shapes(name: str) -> dict:
    "{tensor name: shape} of an official model, from its fixture"
    text = (DATA / f"official_uvit_{name}_keys.txt").read_text()
    lines = [l.split() for l in text.splitlines() if not l.startswith("#")]
    return {k: tuple(map(int, s.split(","))) for k, s in lines}

@pytest.mark.parametrize("name,depth,width,conv,time_scale",
                         [("l2", 20, 1024, True, 999.0), ("h2", 28, 1152, False, 1000.0)])
def test_official_checkpoints_load_by_their_real_names(name, depth, width, conv, time_scale):
    from selfguide.uvit import from_official
    shapes = official_shapes(name)
    assert len(shapes) == {"l2": 261, "h2": 355}[name] and shapes["label_emb.weight"] == (1001, width)
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}  # shapes only: no memory for 500M parameters
    with torch.device("meta"):
        m = from_official({"module." + k: v for k, v in sd.items()})   # strict load_state_dict inside
    assert (m.depth, m.embed_dim, m.mid_block.attn.num_heads, m.num_classes) == (depth, width, 16, 1000)
    assert (m.img_size, m.patch_size, m.in_chans, m.num_patches, m.extras) == (32, 2, 4, 256, 2)
    assert (m.time_scale, isinstance(m.final_layer, torch.nn.Conv2d)) == (time_scale, conv)
    assert m.mid_block.attn.qkv.bias is None and isinstance(m.time_embed, torch.nn.Identity)
    ours = {k: tuple(v.shape) for k, v in m.state_dict().items()}      # every official tensor, renamed, and the null
    want = {k.replace("patch_embed.proj.", "patch_embed."): s for k, s in shapes.items()}
    want.update({"label_emb.weight": (1000, width), "null_emb": (1, width)})
    assert ours == want
    extra = {**sd, "in_blocks.0.attn.qkv.bias": torch.empty(3 * width, device="meta")}
    with pytest.raises(RuntimeError, match="Unexpected key"):           # a tensor ours lacks is refused, not dropped
        with torch.device("meta"): from_official(extra)
