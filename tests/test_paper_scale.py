"""The paper-scale data path end to end on tiny fixtures: LSUN's LMDB and ImageNet-100 -> SD-VAE latents -> training
-> decoded RGB samples; the CLI's `encode`; raw latents refused by the metrics; one-line errors naming the option."""
import json
import numpy as np, pytest, torch
from fixtures import make_lsun_lmdb, make_imagenet, make_vae
from selfguide.files import imagenet100_wnids
from selfguide.latents import LatentFolder
from selfguide.train import train, read_manifest
from selfguide.cli import main, sample_run, evaluate
from selfguide.metrics import evaluate_samples
import selfguide.latents

SMALL = dict(preset="tiny", patch_size=4, image_size=32, steps=3, batch_size=4, warmup_steps=1, ckpt_every=10)

@pytest.fixture(scope="module")
def vae(tmp_path_factory): return make_vae(tmp_path_factory.mktemp("vae") / "sd-vae-ft-ema")

@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFGUIDE_CACHE", str(tmp_path / "cache")); return tmp_path / "cache"

def test_lsun_lmdb_through_the_vae(tmp_path, vae, cache, monkeypatch):
    lmdb = make_lsun_lmdb(tmp_path / "church_outdoor_train_lmdb", n=6, corrupt=1)
    run = train(dataset="lsun", data_root=str(lmdb), vae=str(vae), guidance="none", out_dir=str(tmp_path / "run"), **SMALL)
    m = read_manifest(run)
    assert (m["params"]["vae"], m["recipe"]["name"], m["params"]["clusters"]) == (str(vae), "lsun_churches", 30)
    assert m["latents"]["scale"] == pytest.approx(0.18215) and m["latents"]["image_size"] == 32
    index = json.loads(next(cache.glob("latents/*/index.json")).read_text())
    assert (index["count"], index["skipped"], index["complete"]) == (6, 1, True)       # the corrupt record: counted
    res = sample_run(run, n=3, solver="euler", steps=2, out=tmp_path / "s.npz")
    assert res["images"].shape == (3, 32, 32, 3) and res["images"].dtype == np.uint8  # decoded RGB, not latents
    monkeypatch.setattr(selfguide.latents, "encode", lambda *a, **k: pytest.fail("encoded twice"))
    train(dataset="lsun", data_root=str(lmdb), vae=str(vae), guidance="none", out_dir=str(tmp_path / "run2"), **SMALL)

def test_encode_cli_then_train_on_the_folder(tmp_path, vae, cache):
    root = make_imagenet(tmp_path / "train", imagenet100_wnids(), per_class=1)
    out = tmp_path / "latents"
    main(["encode", "--dataset", "imagenet100", "--data-root", str(root), "--vae", str(vae), "--out", str(out),
          "--image-size", "32", "--num-workers", "0"])
    ds = LatentFolder(out)
    assert (len(ds), ds.num_classes, ds.shape, ds[0][0].shape) == (100, 100, (4, 16, 16), (2, 8, 16, 16))
    main(["train", "--dataset", "latents", "--data-root", str(out), "--guidance", "class", "--preset", "tiny",
          "--patch-size", "4", "--steps", "2", "--batch-size", "8", "--out-dir", str(tmp_path / "run")])
    m = read_manifest(tmp_path / "run")
    assert m["recipe"]["name"] == "imagenet100" and m["params"]["vae"] == str(vae.resolve())  # VAE from the index
    assert sample_run(tmp_path / "run", n=2, solver="euler", steps=1)["images"].shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="--dataset and --data-root"): evaluate(run=tmp_path / "run", n=2)

def test_latents_without_vae_are_refused(tmp_path):
    np.savez(tmp_path / "lat.npz", latents=np.random.randn(8, 4, 8, 8).astype(np.float32))
    run = train(dataset="latents", data_root=str(tmp_path / "lat.npz"), guidance="none", out_dir=str(tmp_path / "run"),
                **{**SMALL, "image_size": None, "patch_size": 2})
    with pytest.raises(ValueError, match="--vae"): sample_run(run, n=2, solver="euler", steps=1)
    with pytest.raises(ValueError, match="raw latents"):
        evaluate_samples(np.zeros((2, 8, 8, 4), np.uint8), "digits")

def test_missing_paths_name_the_option(tmp_path, vae):
    with pytest.raises(FileNotFoundError, match="--vae"):
        train(dataset="lsun", data_root=str(make_lsun_lmdb(tmp_path / "l", n=2, corrupt=0)), vae=str(tmp_path / "no"),
              out_dir=str(tmp_path / "r"), **SMALL)
    with pytest.raises(FileNotFoundError, match="--data-root"): train(dataset="lsun", data_root=str(tmp_path / "no"))
    root = make_imagenet(tmp_path / "in", imagenet100_wnids()[:97])
    with pytest.raises(FileNotFoundError, match="3 of the 100 classes are missing .*--data-root"):
        train(dataset="imagenet100", data_root=str(root), vae=str(vae))

def test_query_image_on_a_latent_run_goes_through_the_encoder(tmp_path, vae, cache):
    from PIL import Image
    lmdb = make_lsun_lmdb(tmp_path / "church_outdoor_train_lmdb", n=8, corrupt=0)
    run = train(dataset="lsun", data_root=str(lmdb), vae=str(vae), guidance="online", clusters=4,
                out_dir=str(tmp_path / "run"), **{**SMALL, "batch_size": 8})
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "q.png")
    res = sample_run(run, n=3, solver="euler", steps=2, query=tmp_path / "q.png")
    assert res["images"].shape == (3, 32, 32, 3) and len(set(res["labels"].tolist())) == 1  # one prototype: the query's
