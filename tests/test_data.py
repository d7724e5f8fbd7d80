import os, subprocess
from pathlib import Path
import numpy as np, pytest, torch
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

INSTALL_FASHION_MNIST = ("install it with `sudo apt-get install dataset-fashion-mnist` (Debian, Ubuntu; `make data` "
                         "does this in a root shell) or put the four IDX files of "
                         "github.com/zalandoresearch/fashion-mnist there; with CI=true this fails instead of skipping")

def fashion_mnist_or_skip():
    "Outside CI, skip a test when Fashion-MNIST is not installed, saying how to install it; in CI (CI=true) go on"
    there = any((FASHION_MNIST_ROOT / f"train-images-idx3-ubyte{s}").exists() for s in ("", ".gz"))
    if not there and os.environ.get("CI", "").lower() in ("", "0", "false"):
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION_MNIST_ROOT}: {INSTALL_FASHION_MNIST}")

def test_fashion_mnist_installed():
    """The real Fashion-MNIST files: `make test` installs Debian's package where it can. In CI a missing copy fails."""
    fashion_mnist_or_skip()
    train, test = load_dataset("fashion_mnist"), load_dataset("fashion_mnist", split="test")
    assert (len(train), len(test), train.shape, train.num_classes) == (60000, 10000, (1, 28, 28), 10)
    assert torch.bincount(train.labels).tolist() == [6000] * 10

def test_missing_fashion_mnist_says_how_to_install_and_fails_in_ci(tmp_path, monkeypatch):
    "`make data` and the tests' skip name the install command when the data is absent; with CI=true both fail"
    script = Path(__file__).resolve().parents[1] / "tools/ensure_fashion_mnist.sh"
    for ci, rc in (("", 0), ("false", 0), ("true", 1)):
        r = subprocess.run([script, tmp_path / "none"], env={**os.environ, "CI": ci}, capture_output=True, text=True)
        assert r.returncode == rc and "sudo apt-get install dataset-fashion-mnist" in r.stdout + r.stderr, (ci, r)
    monkeypatch.setitem(globals(), "FASHION_MNIST_ROOT", tmp_path / "none")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="sudo apt-get install dataset-fashion-mnist"):
        fashion_mnist_or_skip()
    monkeypatch.setenv("CI", "true")
    try: fashion_mnist_or_skip()                                  # no skip in CI: the test goes on, fails on the data
    except pytest.skip.Exception: pytest.fail("a missing Fashion-MNIST must fail in CI, not skip")

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
