"""Metrics on digits: real images score at the floor, degraded ones far from it; the Inception path with stand-ins."""
import json, warnings
from unittest import mock
import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from selfguide import metrics as M
from selfguide.data import ImageDataset, to_float, to_uint8
from test_data import fashion_mnist_or_skip

@pytest.fixture(autouse=True)
def no_inception_env(monkeypatch):
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)  # a user's real weights must not change the tests

@pytest.fixture(scope="session")
def cache(tmp_path_factory): return tmp_path_factory.mktemp("selfguide_cache")

@pytest.fixture(scope="session")
def clf(cache): return M.load_classifier("digits", cache_dir=cache, progress=False)

@pytest.fixture(scope="session")
def sets():
    train, test = M.train_test("digits")
    n, g = len(test), torch.Generator().manual_seed(0)
    pick = lambda ims, seed: ims[torch.randperm(len(ims), generator=torch.Generator().manual_seed(seed))[:n]]
    real = pick(train.images, 1)
    return dict(test=test.images, floor=pick(train.images, 0), real=real,
                blur=to_uint8(TF.gaussian_blur(to_float(real), [5, 5], [1.2, 1.2])),
                modes=pick(train.images[train.labels < 5], 1),  # half of the classes
                noise=torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=g))

@pytest.fixture(scope="session")
def scores(clf, sets):
    return {k: M.classifier_metrics(clf, sets[k], sets["test"]) for k in ("floor", "real", "blur", "modes", "noise")}

def test_classifier_is_accurate_and_cached(clf, cache, monkeypatch):
    assert clf.info["test_acc"] > 0.95  # its training time is measured by `make bench` (benchmarks/classifier_speed.py)
    assert json.loads((cache / "classifier/digits_nativepx.json").read_text())["test_acc"] == clf.info["test_acc"]
    monkeypatch.setattr(M, "train_classifier", mock.Mock(side_effect=AssertionError("retrained")))
    again = M.load_classifier("digits", cache_dir=cache)
    assert again.info["test_acc"] == clf.info["test_acc"]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), clf.state_dict().values()))

def test_fashion_mnist_classifier_learns_in_bounded_time():
    "Where Fashion-MNIST is installed (in CI it must be): 10,000 train images, 2 epochs (12 s on one core)"
    fashion_mnist_or_skip()
    train, test = M.train_test("fashion_mnist")
    keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:10_000]
    _, info = M.train_classifier(ImageDataset(train.images[keep], train.labels[keep], train.name), test, epochs=2,
                                 progress=False)
    assert (info["n_train"], info["n_test"]) == (10_000, 10_000)
    assert info["test_acc"] > 0.78  # measured 0.809 (chance 0.1); the full recipe: 0.89 (nbs/07_metrics.ipynb, slow)

def test_cache_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFGUIDE_CACHE", str(tmp_path))
    assert M.cache_root() == tmp_path and M.cache_root(tmp_path / "x") == tmp_path / "x"

def test_held_out_real_images_score_at_the_floor(scores):
    floor, real = scores["floor"], scores["real"]
    assert real["fd_cls"] < 1.5 * floor["fd_cls"]
    for m in ("precision", "recall"): assert abs(real[m] - floor[m]) < 0.05 and real[m] > 0.9
    assert abs(real["cls_score"] - floor["cls_score"]) < 0.5 and floor["cls_score"] > 9  # 10 classes at most

def test_degraded_sets_score_far_from_the_floor_noise_worst(scores):
    fd = {k: s["fd_cls"] for k, s in scores.items()}
    for k in ("blur", "modes", "noise"): assert fd[k] > 5 * fd["floor"], k
    assert fd["noise"] == max(fd.values())
    assert scores["noise"]["cls_score"] == min(s["cls_score"] for s in scores.values())

def test_precision_and_recall_fall_as_they_should(scores):
    floor, modes, noise = scores["floor"], scores["modes"], scores["noise"]
    assert modes["precision"] > 0.9 and modes["recall"] < 0.6 * floor["recall"]  # mode dropping costs recall only
    assert noise["precision"] < 0.2 and noise["precision"] < modes["precision"]   # noise costs precision
    assert scores["modes"]["cls_score"] < 0.6 * floor["cls_score"]                 # about 5 classes of 10

def test_frechet_distance_and_precision_recall_on_known_sets():
    a = torch.randn(3000, 3, generator=torch.Generator().manual_seed(0))
    assert M.frechet_distance(*M.feature_stats(a), *M.feature_stats(a + 2)) == pytest.approx(12.0, rel=1e-6)
    two = torch.cat([a * 0.1, a * 0.1 + 10])
    pr = M.precision_recall(two, two[:3000])
    assert pr["precision"] == 1.0 and pr["recall"] == pytest.approx(0.5, abs=0.01)

def test_nmi_ari_and_assignment_histogram():
    y = np.repeat(np.arange(10), 30)
    assert M.cluster_scores(y, y) == dict(nmi=1.0, ari=1.0)
    assert M.cluster_scores(np.zeros_like(y), y)["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert M.cluster_scores(np.r_[y, 3], np.r_[y, -1]) == dict(nmi=1.0, ari=1.0)  # unknown labels left out
    s = M.assignment_stats(y, num_clusters=20)
    assert s["used"] == 0.5 and s["entropy"] == pytest.approx(np.log(10)) and s["counts"][:2] == [30, 30]

def test_evaluate_samples_offline(clf, cache, sets):
    r = M.evaluate_samples(sets["real"].permute(0, 2, 3, 1).numpy(), "digits", cache_dir=cache, progress=False)  # NHWC .npz layout
    assert "fid" not in r and "is" not in r
    assert r["n_samples"] == r["n_floor"] == len(sets["real"]) and r["classifier_test_acc"] == clf.info["test_acc"]
    assert r["fd_cls"] < 1.5 * r["floor_fd_cls"] and r["recall"] > 0.9
    same = M.evaluate_samples(to_float(sets["real"]), "digits", cache_dir=cache, progress=False)  # float (N, C, H, W)
    assert same == r

def test_unlabelled_dataset_without_inception_fails_clearly(tmp_path, sets):
    np.savez(tmp_path / "d.npz", images=sets["real"][:, 0].numpy())
    with pytest.raises(ValueError, match="has no labels.*--inception"):
        M.evaluate_samples(sets["real"], "npz", data_root=tmp_path / "d.npz", cache_dir=tmp_path)

def test_missing_inception_file_fails_first_naming_option_and_variable(monkeypatch, tmp_path, sets):
    missing = tmp_path / "inception-2015-12-05.pt"
    monkeypatch.setattr(M, "train_test", mock.Mock(side_effect=AssertionError("work started before the check")))
    for path in (missing, None):
        if path is None: monkeypatch.setenv(M.INCEPTION_ENV, str(missing))
        with pytest.raises(FileNotFoundError) as e: M.evaluate_samples(sets["real"], "digits", inception=path)
        assert "--inception" in str(e.value) and "SELFGUIDE_INCEPTION" in str(e.value) and str(missing) in str(e.value)
    monkeypatch.delenv(M.INCEPTION_ENV)
    assert M.check_inception(None) is None

class StandIn(nn.Module):
    "clean-fid's TorchScript interface (`layers`, `output`) with 16 random features"
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(6), nn.Flatten(), nn.Linear(108, 16))
        self.output = nn.Linear(16, 10)
        self.output.weight.data.mul_(20)
    def forward(self, x): return self.output(self.layers(x))

@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "standin.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, but it is clean-fid's format
        torch.jit.save(torch.jit.script(StandIn()), path)
    return path

def test_inception_path_with_a_stand_in_gives_finite_fid_is_and_caches_reference(standin, cache, sets, monkeypatch):
    monkeypatch.setenv(M.INCEPTION_ENV, str(standin))  # the variable alone turns FID and IS on
    r = M.evaluate_samples(sets["real"], "digits", cache_dir=cache, progress=False)
    noise = M.evaluate_samples(sets["noise"], "digits", cache_dir=cache, progress=False)
    assert all(np.isfinite(x[k]) for x in (r, noise) for k in ("fid", "is", "is_std")) and r["is"] > 1
    assert r["fid"] < noise["fid"]
    inc = M.InceptionFeatures(standin)
    assert inc.kind == "clean-fid" and (cache / f"inception/digits_nativepx_train_{inc.tag}.npz").exists()
    monkeypatch.setattr(M, "load_dataset", mock.Mock(side_effect=AssertionError("reference recomputed")))
    ref = M.inception_reference(inc, "digits", cache_dir=cache)  # the second call reads the cache
    assert ref["mu"].shape == (16,) and int(ref["n"]) == 1500

class CleanFidStandIn(nn.Module):
    "clean-fid's inception-2015-12-05.pt interface with random weights: `layers` -> 2048 features, `output` -> 1008"
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 8, 1), nn.AdaptiveAvgPool2d(16), nn.Flatten())  # mixes R, G and B
        self.output = nn.Linear(2048, 1008)
    def forward(self, x): return self.output(self.layers(x))

@pytest.fixture(scope="module")
def clean_fid_file(tmp_path_factory):
    "The stand-in under clean-fid's file name, so that clean-fid's own `InceptionV3W` loads it (no download)"
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cleanfid") / "inception-2015-12-05.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(CleanFidStandIn()), path)
    return path

def png_files(folder, images) -> list[str]:
    "uint8 images (N, C, H, W) as PNG files (grey as mode L), what clean-fid's folder path reads"
    from PIL import Image
    folder.mkdir(exist_ok=True)
    for i, im in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(folder / f"{i:03d}.png")
    return [str(folder / f"{i:03d}.png") for i in range(len(images))]

def clean_fid_net(path):
    "clean-fid's own wrapper of its TorchScript Inception (`InceptionV3W`, mode 'clean': the resize happens before it)"
    from cleanfid.inception_torchscript import InceptionV3W
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)                     # torch.jit.load is deprecated
        return InceptionV3W(str(path.parent), download=False)

class Capture(nn.Module):
    "In place of the network's `layers`: records the tensor it is given"
    def forward(self, x): self.x = x; return torch.zeros(len(x), 2048)

@pytest.mark.parametrize("channels", [3, 1])
def test_inception_input_is_clean_fids_clean_mode(clean_fid_file, tmp_path, channels):
    from cleanfid.utils import ResizeDataset
    ims = torch.randint(0, 256, (5, channels, 20, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = ResizeDataset(png_files(tmp_path / "png", ims), mode="clean")  # clean-fid reads (RGB), resizes, to tensor
    net = clean_fid_net(clean_fid_file)
    net.layers = Capture()
    net(torch.stack([data[i] for i in range(len(data))]))                  # its normalisation, then the network
    ours = M.inception_input(ims)
    assert ours.dtype == net.layers.x.dtype == torch.float32 and ours.shape == (5, 3, 299, 299)
    assert torch.equal(ours, net.layers.x)                                 # bit for bit: resize, scale, channel order

def test_inception_features_are_clean_fids(clean_fid_file, tmp_path):
    from cleanfid.fid import get_files_features
    ims = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    theirs = get_files_features(png_files(tmp_path / "png", ims), clean_fid_net(clean_fid_file), num_workers=0,
                                batch_size=4, device=torch.device("cpu"), mode="clean", verbose=False)  # its whole path
    pool, logits = M.InceptionFeatures(clean_fid_file)(ims)
    assert theirs.shape == pool.shape == (6, 2048) and logits.shape == (6, 1008)
    np.testing.assert_allclose(pool.numpy(), theirs, rtol=1e-5, atol=1e-6)

def test_fid_from_features_is_clean_fids():
    from cleanfid.fid import fid_from_feats
    g = np.random.default_rng(0)
    a = g.standard_normal((500, 32)).astype(np.float32)                    # float32, as Inception's features
    b = (g.standard_normal((400, 32)) @ g.standard_normal((32, 32)) * 0.3 + 0.5).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)                # clean-fid passes scipy's deprecated `disp`
        for x, y in ((a, b), (a, a[:250]), (b, a)):
            assert M.frechet_distance(*M.feature_stats(x), *M.feature_stats(y)) == pytest.approx(fid_from_feats(x, y),
                                                                                                rel=1e-5)

def test_torch_fidelity_weights_file_loads(tmp_path, sets):
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    with mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None), \
         mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])  # random weights, the real layout
    torch.save(net.state_dict(), tmp_path / "weights-inception.pth")
    inc = M.InceptionFeatures(tmp_path / "weights-inception.pth")
    pool, logits = inc(sets["real"][:2])
    assert inc.kind == "torch-fidelity" and pool.shape == (2, 2048) and logits.shape == (2, 1008)

def test_reference_stats_file_replaces_the_data(standin, sets, tmp_path, monkeypatch):
    inc = M.InceptionFeatures(standin)
    pool = M.inception_features(inc, sets["real"], progress=False)[0]
    np.savez(tmp_path / "fid_stats.npz", mu=pool.mean(0) + 1, sigma=np.cov(pool, rowvar=False))  # U-ViT's keys
    monkeypatch.setattr(M, "load_dataset", mock.Mock(side_effect=AssertionError("statistics computed from the data")))
    for dataset in ("lsun", "latents", None):                            # paper scale: no data, no cache needed
        r = M.evaluate_samples(sets["real"], dataset, inception=standin, reference=tmp_path / "fid_stats.npz",
                               cache_dir=tmp_path / "empty", progress=False)
        assert set(r) == {"n_samples", "fid", "is", "is_std"} and r["fid"] == pytest.approx(16.0, rel=1e-6)  # |mu shift|^2
    assert not (tmp_path / "empty").exists()

def test_reference_stats_errors_name_the_option(standin, sets, tmp_path):
    with pytest.raises(FileNotFoundError, match="--reference-stats"): M.load_reference(tmp_path / "none.npz")
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="not mu, sigma"): M.load_reference(tmp_path / "images.npz")
    np.savez(tmp_path / "wide.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="2048 features, the Inception network 16"):
        M.evaluate_samples(sets["real"][:20], "lsun", inception=standin, reference=tmp_path / "wide.npz", progress=False)
    with pytest.raises(ValueError, match="--inception"):
        M.evaluate_samples(sets["real"][:20], "lsun", reference=tmp_path / "wide.npz")
    with pytest.raises(ValueError, match="--reference-stats"): M.evaluate_samples(sets["real"][:20], None, inception=standin)
