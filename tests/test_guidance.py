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
