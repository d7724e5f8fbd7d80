"""The SD-VAE latent space on a tiny random-init AutoencoderKL: encode, resume, dataset, draws, decode, cache."""
import hashlib, json, pickle
import numpy as np, pytest, torch
from diffusers import AutoencoderKL
from selfguide.data import ImageDataset, to_float, data_key
from fixtures import make_vae as tiny_vae
from selfguide.latents import (load_vae, vae_scale, encode, LatentFolder, draw_latents, decode, latent_cache,
                               encode_cached, read_index)

@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory): return tiny_vae(tmp_path_factory.mktemp("vae") / "tiny-vae")

def images(n=10, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)
    return ImageDataset(x, torch.arange(n) % 3, "toy")

class Lazy:
    "Stand-in for selfguide.files' lazy datasets: read(i) is a uint8 (3, S, S) image or None when unreadable"
    def __init__(self, data, bad=()): self.data, self.bad, self.labels, self.name = data, set(bad), data.labels, "lazy"
    image_size = 16
    def __len__(self): return len(self.data)
    def read(self, i): return None if i in self.bad else self.data.images[i]
    def identity(self): return "lazy:" + hashlib.sha1(self.data.images.numpy().tobytes()).hexdigest()

@pytest.fixture
def count_calls(monkeypatch):
    calls = []
    orig = AutoencoderKL.encode
    def counting(self, x, *a, **kw): calls.append(len(x)); return orig(self, x, *a, **kw)
    monkeypatch.setattr(AutoencoderKL, "encode", counting)
    return calls

def test_moments_views_and_index(vae_dir, tmp_path):
    data = images(5, c=1)                                                    # grey images are encoded as RGB
    out = encode(data, vae_dir, tmp_path / "lat", dtype="float32", progress=False)
    m = np.load(out / "moments_00000.npy")
    assert m.shape == (5, 2, 8, 8, 8) and m.dtype == np.float32
    vae = load_vae(vae_dir)
    x = to_float(data.images[:2]).expand(-1, 3, -1, -1)
    with torch.no_grad():
        for view, xv in ((0, x), (1, x.flip(-1))):
            d = vae.encode(xv).latent_dist
            want = torch.cat([d.mean, d.logvar], 1)                          # view 1 = moments of the mirror image
            torch.testing.assert_close(torch.from_numpy(m[:2, view]), want, atol=1e-4, rtol=1e-4)
    ix = json.loads((out / "index.json").read_text())
    assert (ix["complete"], ix["n"], ix["count"], ix["scale_factor"], ix["image_size"], ix["latent_shape"]) == \
           (True, 5, 5, 0.18215, 16, [4, 8, 8])
    assert vae_scale(vae) == 0.18215 and ix["name"] == "toy" and ix["vae"] == str(vae_dir.resolve())
    assert np.load(out / "labels_00000.npy").tolist() == [0, 1, 2, 0, 1]

def test_scale_from_config(tmp_path):
    d = tiny_vae(tmp_path / "vae05", scaling_factor=0.5)
    assert vae_scale(load_vae(d)) == 0.5
    assert LatentFolder(encode(images(3), d, tmp_path / "lat", progress=False)).scale == 0.5

def test_resume_recomputes_only_missing_shards(vae_dir, tmp_path, count_calls):
    data = images(10)
    out = encode(data, vae_dir, tmp_path / "lat", batch_size=2, shard_size=4, progress=False)   # shards 4, 4, 2
    assert len(count_calls) == 5 and len(list(out.glob("moments_*.npy"))) == 3
    before = {p.name: p.stat().st_ino for p in out.glob("*.npy")}           # a rewritten file is a new inode
    ref = np.load(out / "moments_00001.npy")
    (out / "moments_00001.npy").unlink()                                     # a lost shard file
    ix = json.loads((out / "index.json").read_text()); del ix["shards"]["00002"]; ix["complete"] = False
    (out / "index.json").write_text(json.dumps(ix))                         # a shard the killed run did not record
    with pytest.raises(RuntimeError, match="unfinished encode.*selfguide encode"): LatentFolder(out)
    count_calls.clear()
    encode(data, vae_dir, out, batch_size=2, shard_size=4, progress=False)
    assert count_calls == [4, 4, 4]                              # 2 batches of shard 1, 1 of shard 2, x2 views
    after = {p.name: p.stat().st_ino for p in out.glob("*.npy")}
    assert after["moments_00000.npy"] == before["moments_00000.npy"]
    assert after["moments_00002.npy"] != before["moments_00002.npy"]
    np.testing.assert_array_equal(np.load(out / "moments_00001.npy"), ref)
    count_calls.clear()
    encode(data, vae_dir, out, batch_size=2, shard_size=4, progress=False)
    assert count_calls == [] and len(LatentFolder(out)) == 10 and not list(out.glob("*.tmp"))
    assert json.loads((out / "index.json").read_text())["count"] == 10     # totals survive a run with nothing to do
    with pytest.raises(ValueError, match="other data.*--out"): encode(images(10, seed=1), vae_dir, out, shard_size=4)

def test_unreadable_images_skipped_and_counted(vae_dir, tmp_path):
    data = images(10)
    lazy = Lazy(data, bad=(2, 7))
    out = encode(lazy, vae_dir, tmp_path / "lat", batch_size=3, shard_size=4, num_workers=1, progress=False)
    ix = json.loads((out / "index.json").read_text())
    assert (ix["skipped"], ix["skipped_first"], ix["count"], ix["identity"]) == (2, [2, 7], 8, data_key(lazy))
    assert [s["count"] for s in ix["shards"].values()] == [3, 3, 2]
    lat = LatentFolder(out)
    keep = [i for i in range(10) if i not in (2, 7)]
    assert len(lat) == 8 and lat.labels.tolist() == data.labels[keep].tolist()
    ref = LatentFolder(encode(data, vae_dir, tmp_path / "ref", shard_size=4, progress=False))
    torch.testing.assert_close(lat[5][0], ref[keep[5]][0], atol=2e-3, rtol=1e-2)  # float16 storage

def test_latent_folder(vae_dir, tmp_path):
    lat = LatentFolder(encode(images(10), vae_dir, tmp_path / "lat", shard_size=4, progress=False))
    x, y = lat[9]
    assert (len(lat), lat.shape, x.shape, x.dtype, y) == (10, (4, 8, 8), (2, 8, 8, 8), torch.float32, 0)
    assert (lat.num_classes, lat.moments, lat.labels.dtype, lat.image_size) == (3, True, torch.long, 16)
    assert lat.name == "toy"
    assert lat.vae == str(vae_dir.resolve())
    assert torch.equal(lat[-1][0], x) and len(lat.identity()) == 40
    c = lat.clean([9, 0])
    assert c.shape == (2, 4, 8, 8) and torch.equal(c[0], lat.scale * x[0, :4])
    again = pickle.loads(pickle.dumps(lat))                                   # what a spawned DataLoader worker gets
    assert again._maps is None and torch.equal(again[9][0], x)               # it maps the shards itself
    mb, yb = next(iter(torch.utils.data.DataLoader(lat, batch_size=4)))
    assert mb.shape == (4, 2, 8, 8, 8) and yb.tolist() == [0, 1, 2, 0]
    with pytest.raises(FileNotFoundError, match="--data-root.*selfguide encode"): LatentFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"): read_index(tmp_path / "nope")

def test_draw_latents():
    m = torch.randn(6, 2, 8, 4, 4)
    z = [draw_latents(m, 0.18215, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert z[0].shape == (6, 4, 4, 4) and torch.equal(z[0], z[1])
    assert not torch.equal(z[0], draw_latents(m, 0.18215, torch.Generator().manual_seed(4)))
    fixed = torch.zeros(40000, 2, 2, 1, 1)
    fixed[:, 0, 0], fixed[:, 1, 0], fixed[:, :, 1] = 2.0, -2.0, np.log(0.09)  # view means +-2, std 0.3
    z = draw_latents(fixed, 0.5, torch.Generator().manual_seed(0))[:, 0, 0, 0]
    flipped = z < 0
    assert abs(flipped.float().mean() - 0.5) < 0.01
    for v, zz in ((1.0, z[~flipped]), (-1.0, z[flipped])):                   # scale * mean, scale * std
        assert abs(zz.mean() - v) < 0.005 and abs(zz.std() - 0.15) < 0.005

def test_decode_is_the_vae_on_unscaled_latents(vae_dir, tmp_path):
    vae = load_vae(vae_dir)
    z = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))  # scaled latents, as models see them
    with torch.no_grad(): y = AutoencoderKL.decode(vae, z / 0.18215).sample            # the VAE itself: (5, 3, 16, 16)
    want = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)                      # [-1, 1] -> [0, 255], clipped
    assert (y < -1).any() and (y > 1).any() and not y.eq(y.round()).all()            # clipping and rounding both matter
    for x in (decode(vae, z, batch_size=2), decode(vae, z, 0.18215), decode(vae_dir, z, device="cpu")):
        assert x.shape == (5, 3, 16, 16) and x.dtype == torch.uint8
        assert (x.int() - want.int()).abs().max() <= 1 and (x == want).float().mean() > 0.99  # batch-split float noise
    other = tiny_vae(tmp_path / "vae05", scaling_factor=0.5)  # the scale comes from its config
    with torch.no_grad(): y = AutoencoderKL.decode(load_vae(other), z / 0.5).sample
    assert torch.equal(decode(other, z, device="cpu"), ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))

def test_cache_key_and_encode_once(vae_dir, tmp_path, count_calls):
    data = images(6)
    key = latent_cache(data, vae_dir, 16, tmp_path)
    assert key.parent == tmp_path / "latents"
    assert latent_cache(images(6, seed=1), vae_dir, 16, tmp_path) != key     # content
    assert latent_cache(data, vae_dir, 32, tmp_path) != key                  # size
    assert latent_cache(data, vae_dir, None, tmp_path) == key                # the data's own size
    assert latent_cache(data, tiny_vae(tmp_path / "other", scaling_factor=0.2), 16, tmp_path) != key  # VAE
    lat = encode_cached(data, vae_dir, 16, cache_dir=tmp_path, progress=False)
    assert lat.root == key and len(lat) == 6 and count_calls
    count_calls.clear()
    assert len(encode_cached(data, vae_dir, 16, cache_dir=tmp_path, progress=False)) == 6 and count_calls == []
    big = encode_cached(data, vae_dir, 32, cache_dir=tmp_path, progress=False)   # resized to 32 on the way
    assert big.shape == (4, 16, 16) and big.image_size == 32 and big.root != key

def test_missing_vae(tmp_path):
    for bad in (tmp_path / "nope", tmp_path, None):
        with pytest.raises(FileNotFoundError, match="--vae.*sd-vae-ft-ema"): load_vae(bad)
    with pytest.raises(FileNotFoundError, match="--vae"): encode(images(2), tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ValueError, match="uint8"):
        encode(ImageDataset(torch.randn(2, 4, 8, 8)), tiny_vae(tmp_path / "v"), tmp_path / "out", progress=False)
