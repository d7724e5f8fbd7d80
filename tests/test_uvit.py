import pytest, torch
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

def test_official_checkpoint_file_loads(tmp_path):
    from selfguide.uvit import load_official
    torch.manual_seed(0)
    src = UViT(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=2, num_classes=3)
    sd = {k.replace("patch_embed.", "patch_embed.proj."): v for k, v in src.state_dict().items() if k not in ("null_emb", "label_emb.weight")}
    sd["label_emb.weight"] = torch.randn(4, 32)                       # 3 classes + the null row, official layout
    sd["pos_embed"] = torch.cat([src.pos_embed[:, 1:2], src.pos_embed[:, :1], src.pos_embed[:, 2:]], 1)  # [label, time, ...]
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "uvit.pth")
    m = load_official(tmp_path / "uvit.pth", num_heads=2)
    assert (m.num_classes, m.num_blocks, m.in_chans, m.img_size) == (3, 5, 4, 8)
    assert torch.equal(m.null_emb, sd["label_emb.weight"][-1:]) and torch.equal(m.pos_embed, src.pos_embed)
    with pytest.raises(FileNotFoundError, match="checkpoint"): load_official(tmp_path / "missing.pth")
