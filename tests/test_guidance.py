"""Offline and external guidance: clusters of features become conditions; the init run's weights are reused."""
import json, numpy as np, pytest, torch
from selfguide.train import train, load_run, read_manifest
from selfguide.guidance import kmeans, cluster_scores, diffusion_features, sample_conditions
from selfguide.cli import main

SMALL = dict(dataset="digits", preset="tiny", patch_size=4, batch_size=32, lr=1e-3, warmup_steps=2, ema_decay=0.9, seed=0)

@pytest.fixture(scope="module")
def uncond(tmp_path_factory):
    return train(**SMALL, guidance="none", steps=4, out_dir=str(tmp_path_factory.mktemp("g") / "none"))

def test_offline_guidance_clusters_features_of_the_init_run(uncond, tmp_path):
    run = train(**SMALL, guidance="offline", init=str(uncond), clusters=7, feature_t=0.1, steps=2,
                out_dir=str(tmp_path / "off"), cache_dir=str(tmp_path / "cache"))
    m = read_manifest(run)
    cl = m["clusters"]
    assert cl["k"] == 7 and sum(cl["counts"]) == 1500 and cl["layer"] == 3 and cl["t"] == 0.1
    assert 0 <= m["metrics"]["nmi"] <= 1 and "ari" in m["metrics"]
    model, cfg = load_run(run)
    assert model.num_classes == 7
    a, _ = load_run(uncond)
    # before its own training the offline run started from the init run's weights: blocks match after 2 small steps
    assert (model.mid_block.mlp.fc1.weight - a.mid_block.mlp.fc1.weight).abs().max() < 0.1
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 1   # the features were cached
    main(["sample", "--run", str(run), "--n", "9", "--solver", "euler", "--steps", "2", "--out", str(tmp_path / "s.npz")])
    labels = np.load(tmp_path / "s.npz")["labels"]
    assert all(cl["counts"][c] > 0 for c in labels)                        # clusters drawn from the data's frequencies

def test_offline_needs_init(tmp_path):
    with pytest.raises(ValueError, match="--init"): train(**SMALL, guidance="offline", steps=1, out_dir=str(tmp_path))

def test_external_guidance_with_a_local_timm_encoder(tmp_path):
    import timm
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), tmp_path / "enc.pth")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (40, 16, 16), dtype=np.uint8), labels=np.arange(40) % 4)
    run = train(dataset="npz", data_root=str(tmp_path / "d.npz"), guidance="external", encoder="resnet18",
                encoder_weights=str(tmp_path / "enc.pth"), clusters=4, preset="tiny", patch_size=4, batch_size=8, steps=2,
                out_dir=str(tmp_path / "ext"))
    cl = read_manifest(run)["clusters"]
    assert cl["source"] == "resnet18" and sum(cl["counts"]) == 40
    with pytest.raises(FileNotFoundError, match="--encoder-weights"):
        train(dataset="digits", guidance="external", encoder="resnet18", encoder_weights=str(tmp_path / "none.pth"),
              steps=1, out_dir=str(tmp_path / "ext2"))

def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 8, generator=g) * 10
    y = torch.arange(500) % 5
    x = centers[y] + torch.randn(500, 8, generator=g)
    assert cluster_scores(kmeans(x, 5), y.numpy())["nmi"] > 0.99
    with pytest.raises(ValueError, match="clusters"): kmeans(x[:3], 5)

def _tiny_net():
    from selfguide.uvit import build_uvit
    torch.manual_seed(0)
    return build_uvit("tiny", img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=2, num_heads=2)

def test_feature_cache_keys_hold_data_content_path_and_seed(tmp_path, monkeypatch):
    from selfguide import guidance
    from selfguide.data import ImageDataset
    net, g = _tiny_net(), torch.Generator().manual_seed(0)
    a = ImageDataset(torch.randint(0, 256, (6, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(6), "d")
    b = ImageDataset(torch.randint(0, 256, (6, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(6), "d")  # twin
    calls = []
    real = guidance.diffusion_features
    monkeypatch.setattr(guidance, "diffusion_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = lambda data, **kw: guidance.cached_features("net", net, data, 1, 0.2, "mean", tmp_path, progress=False, **kw)
    fa, fb = run(a), run(b)
    run(a, seed=1); run(a, path="ddpm")
    assert len(list((tmp_path / "features").glob("*.pt"))) == 4 and len(calls) == 4   # content, seed, path: new files
    assert not torch.equal(fa, fb)
    same = ImageDataset(a.images.clone(), a.labels.clone(), "other name")
    assert torch.equal(run(same), fa) and len(calls) == 4                 # the same content: a cache hit

def test_data_key_uses_identity_when_the_dataset_has_one():
    from selfguide.guidance import data_key
    class Lazy:
        def __init__(self, root): self.root = root
        def identity(self): return dict(root=self.root, n=100)
    assert data_key(Lazy("/a")) == data_key(Lazy("/a")) != data_key(Lazy("/b"))
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    y = x.clone(); y[2, 0, 3, 3] = 1
    assert data_key(x) == data_key(x.clone()) != data_key(y)          # one pixel changes the key

def test_feature_size_guard_refuses_before_any_work(tmp_path):
    net = _tiny_net()                                                  # readout patches: 4 tokens x 16 = 64 floats
    huge = torch.zeros(1, 1, 8, 8, dtype=torch.uint8).expand(80_000_000, -1, -1, -1)  # 20 GB of features, no memory
    with pytest.raises(ValueError, match="use readout 'token' or 'mean'"): diffusion_features(net, huge, 1, 0.2)
    from selfguide.guidance import cached_features
    with pytest.raises(ValueError, match="130 GB"): cached_features("net", net, huge, 1, 0.2, "patches", tmp_path)
    assert not (tmp_path / "features").exists()

def test_ddpm_features_read_the_input_noised_on_the_official_schedule():
    from selfguide.paths import get_path
    from selfguide.data import to_float
    g = torch.Generator().manual_seed(1)
    net, images = _tiny_net().eval(), torch.randint(0, 256, (5, 1, 8, 8), generator=g, dtype=torch.uint8)
    f = diffusion_features(net, images, 1, 0.2, "mean", path="ddpm", seed=3, progress=False)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    t = torch.full((5,), 0.2)
    with torch.no_grad(): ref = net.features(get_path("ddpm").x_t(to_float(images), noise, t), t, 1)["mean"]
    assert torch.allclose(f, ref, atol=1e-6)
    assert not torch.allclose(f, diffusion_features(net, images, 1, 0.2, "mean", path="cv", seed=3, progress=False))

def test_pca_encoder_clusters_pixels_without_weights(tmp_path):
    from selfguide.guidance import PixelPCA, load_encoder, encoder_features
    enc = load_encoder("pca", None)                                     # no weights file needed
    assert isinstance(enc, PixelPCA) and enc.source == "pca of pixels" and enc.n_components == 16
    rng = np.random.default_rng(0)
    centers = rng.integers(0, 256, (4, 1, 16, 16))
    y = np.arange(80) % 4
    imgs = np.clip(centers[y] + rng.normal(0, 20, (80, 1, 16, 16)), 0, 255).astype(np.uint8)
    f = encoder_features(load_encoder("pca8", None), torch.from_numpy(imgs))
    assert f.shape == (80, 8) and torch.isfinite(f).all()
    assert cluster_scores(kmeans(f, 4), y)["nmi"] > 0.99                # separated images stay separated
    np.savez(tmp_path / "d.npz", images=imgs[:, 0], labels=y)
    run = train(dataset="npz", data_root=str(tmp_path / "d.npz"), guidance="external", encoder="pca4", clusters=4,
                preset="tiny", patch_size=4, batch_size=8, steps=2, out_dir=str(tmp_path / "pca"))
    m = read_manifest(run)
    assert m["clusters"]["source"] == "pca of pixels" and m["clusters"]["encoder"] == "pca4"
    assert sum(m["clusters"]["counts"]) == 80 and m["metrics"]["nmi"] > 0.99
    model, _ = load_run(run)
    assert model.num_classes == 4
