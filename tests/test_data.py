import os, numpy as np, pytest, torch
from selfguide.data import load_dataset, FASHION_MNIST_ROOT, to_uint8

def test_digits():
    ds = load_dataset("digits")
    x, y = ds[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1 and 0 <= y < 10
    assert len(load_dataset("digits", split="test")) == 297

def test_npz_grey_and_colour(tmp_path):
    np.savez(tmp_path / "g.npz", images=np.zeros((3, 8, 8), np.uint8), labels=np.array([1, 2, 3]))
    np.savez(tmp_path / "c.npz", images=np.full((2, 8, 8, 3), 255, np.uint8))
    g, c = load_dataset("npz", tmp_path / "g.npz"), load_dataset("npz", tmp_path / "c.npz")
    assert g.shape == (1, 8, 8) and g[0][1] == 1 and g[0][0].min() == -1
    assert c.shape == (3, 8, 8) and c[0][1] == -1 and c[0][0].max() == 1

def test_missing_path_names_path_and_option(tmp_path):
    with pytest.raises(FileNotFoundError) as e: load_dataset("folder", tmp_path / "nope")
    assert "nope" in str(e.value) and "--data-root" in str(e.value)
    with pytest.raises(ValueError, match="needs data_root"): load_dataset("npz")

def test_fashion_mnist_installed():
    """The real Fashion-MNIST files: `make test` installs Debian's package where it can. In CI a missing copy fails."""
    if not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").exists() and not os.environ.get("CI"):
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT} (apt-get install dataset-fashion-mnist)")
    train, test = load_dataset("fashion_mnist"), load_dataset("fashion_mnist", split="test")
    assert (len(train), len(test), train.shape, train.num_classes) == (60000, 10000, (1, 28, 28), 10)
    assert torch.bincount(train.labels).tolist() == [6000] * 10

def test_latents(tmp_path):
    lat = np.random.default_rng(0).standard_normal((5, 4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "lat.npz", latents=lat)
    ds = load_dataset("latents", tmp_path / "lat.npz")
    x, y = ds[2]
    assert ds.shape == (4, 8, 8) and y == -1 and torch.equal(x, torch.from_numpy(lat[2]))  # latents pass unchanged
    with pytest.raises(KeyError, match="latents"):
        np.savez(tmp_path / "bad.npz", images=lat); load_dataset("latents", tmp_path / "bad.npz")

def test_identity_is_the_content():
    u8 = torch.randint(0, 256, (4, 1, 6, 6), dtype=torch.uint8)
    a = load_dataset("digits")
    assert len(a.identity()) == 12 and a.identity() == load_dataset("digits").identity()
    assert a.identity() != load_dataset("digits", split="test").identity() != load_dataset("digits", image_size=8).identity()
    from selfguide.data import ImageDataset
    assert ImageDataset(u8).identity() == ImageDataset(u8.clone(), name="other").identity()
    assert ImageDataset(u8).identity() != ImageDataset(u8, torch.arange(4)).identity()
    assert ImageDataset(u8.float()).identity() != ImageDataset(u8).identity()  # latents vs bytes of the same values

def test_paper_datasets_are_registered():
    from selfguide.data import DATASETS, DATASET_ALIASES
    assert {"lsun_churches", "imagenet", "imagenet100"} <= set(DATASETS) and DATASET_ALIASES == {"lsun": "lsun_churches"}
    with pytest.raises(ValueError, match="known datasets: .*imagenet100.*lsun"): load_dataset("cifar")
