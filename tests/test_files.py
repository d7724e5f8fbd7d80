"""The paper's image datasets read lazily: LSUN's LMDB and folders, ImageNet, ImageNet-100; skips, workers, identity."""
import io, logging, pickle, shutil
import numpy as np, pytest, torch
from PIL import Image
from fixtures import make_lsun_lmdb, make_image_folder, make_imagenet
from selfguide.data import load_dataset
from selfguide.files import ImageFiles, center_crop, imagenet100_wnids, lmdb_env, load_lsun

@pytest.fixture(scope="module")
def church(tmp_path_factory):
    return make_lsun_lmdb(tmp_path_factory.mktemp("lsun") / "church_outdoor_train_lmdb", n=6, corrupt=1)

def test_lmdb_is_read_and_cropped(church):
    ds = load_dataset("lsun", church, image_size=32)  # the alias users type
    assert isinstance(ds, ImageFiles) and ds.lmdb and ds.name == "lsun_churches"
    assert (len(ds), ds.shape, ds.num_classes, ds.labels.tolist()) == (7, (3, 32, 32), 0, [-1] * 7)
    assert all(isinstance(k, bytes) and len(k) == 40 for k in ds.items) and ds.items == sorted(ds.items)
    good = [i for i in range(len(ds)) if ds.read(i) is not None]
    assert len(good) == 6
    with lmdb_env(church).begin() as txn: raw = txn.get(ds.items[good[0]])
    ref = np.asarray(center_crop(Image.open(io.BytesIO(raw)), 32))  # (32, 32, 3)
    x = ds.read(good[0])
    assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(ref.copy()).permute(2, 0, 1))
    assert load_dataset("lsun_churches", church).shape == (3, 256, 256)  # image_size None -> 256

def test_center_crop_follows_adm():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 513, 3), dtype=np.uint8))  # 513 x 300
    out = center_crop(im, 64)  # 300 >= 128: BOX to 256x150; 150 >= 128: BOX to 128x75; BICUBIC to 109x64; crop
    ref = im.resize((256, 150), Image.BOX).resize((128, 75), Image.BOX)
    ref = ref.resize((109, 64), Image.BICUBIC).crop((22, 0, 86, 64))
    assert out.size == (64, 64) and np.array_equal(np.asarray(out), np.asarray(ref))
    assert center_crop(Image.new("L", (37, 53)), 64).mode == "RGB"

def test_corrupt_records_are_skipped_and_logged_once(church, caplog):
    ds = load_lsun(church, image_size=16)
    with caplog.at_level(logging.WARNING, logger="selfguide.data"):
        items = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]  # two epochs, no crash
    (bad,) = ds.skipped
    warnings = [r for r in caplog.records if r.name == "selfguide.data"]
    assert len(warnings) == 1 and ds.items[bad].decode() in warnings[0].getMessage()
    nxt = (bad + 1) % len(ds)
    assert torch.equal(items[bad][0], items[nxt][0]) and ds.read(bad) is None
    assert all(x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 for x, _ in items)

def test_dataloader_workers_never_crash(church):
    ds = load_lsun(church, image_size=16)
    ds.read(0)  # the parent has its environment open before the workers fork
    xs = torch.cat([x for x, _ in torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)])
    assert xs.shape == (7, 3, 16, 16)
    assert torch.equal(xs, torch.stack([ds[i][0] for i in range(len(ds))]))

def test_dataset_pickles(church, tmp_path):
    ds = load_lsun(church, image_size=16)
    again = pickle.loads(pickle.dumps(ds))
    assert torch.equal(again.read(1), ds.read(1)) and again.identity() == ds.identity()
    folder = load_lsun(make_image_folder(tmp_path / "f"), image_size=16)
    assert torch.equal(pickle.loads(pickle.dumps(folder))[2][0], folder[2][0])

def test_identity_tells_equal_names_and_lengths_apart(church, tmp_path):
    a = load_lsun(make_image_folder(tmp_path / "a" / "churches", seed=0), image_size=16)
    b = load_lsun(make_image_folder(tmp_path / "b" / "churches", seed=1), image_size=16)
    assert (a.name, len(a)) == (b.name, len(b)) and a.identity() != b.identity()
    assert a.identity() == load_lsun(tmp_path / "a" / "churches", image_size=16).identity()  # stable
    assert a.identity() != load_lsun(tmp_path / "a" / "churches", image_size=32).identity()
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    assert a.identity() != load_lsun(tmp_path / "c" / "churches", image_size=16).identity()  # another root
    i = load_lsun(church, image_size=16).identity()
    assert len(i) == 12 and int(i, 16) >= 0 and i == load_lsun(church, image_size=16).identity()

def test_folder_of_images_is_searched_recursively(tmp_path):
    ds = load_dataset("lsun", make_image_folder(tmp_path / "imgs", n=5), image_size=24)
    assert ds.items == ["000.jpg", "001.png", "003.png", "004.jpg", "sub/002.jpg"] and not ds.lmdb
    assert ds[4][0].shape == (3, 24, 24)

def test_imagenet_labels_follow_sorted_wnids(tmp_path):
    wnids = ["n02869837", "n01749939", "n01440764"]
    make_imagenet(tmp_path / "inet" / "train", wnids, per_class=2)
    for root in (tmp_path / "inet", tmp_path / "inet" / "train"):  # class folders under data_root/train or data_root
        ds = load_dataset("imagenet", root, image_size=16)
        assert (len(ds), ds.num_classes, ds.labels.tolist()) == (6, 3, [0, 0, 1, 1, 2, 2])
        assert ds.items[0] == "n01440764/n01440764_0.JPEG" and ds.root == tmp_path / "inet" / "train"
        assert ds[5][1] == 2 and ds[5][0].shape == (3, 16, 16)

def test_imagenet100_reads_its_100_classes(tmp_path):
    wnids = imagenet100_wnids()
    make_imagenet(tmp_path / "train", wnids + ["n01440764"], per_class=1)
    ds = load_dataset("imagenet100", tmp_path, image_size=8)
    assert (len(ds), ds.num_classes, ds.labels.tolist()) == (100, 100, list(range(100)))
    assert [f.split("/")[0] for f in ds.items] == sorted(wnids) and ds.name == "imagenet100"
    missing = sorted(wnids)[10:13]
    for w in missing: shutil.rmtree(tmp_path / "train" / w)
    with pytest.raises(FileNotFoundError) as e: load_dataset("imagenet100", tmp_path)
    msg = str(e.value)
    assert msg.startswith("imagenet100: 3 of the 100 classes are missing under ") and "--data-root" in msg
    assert msg.endswith(": " + ", ".join(missing)) and "\n" not in msg
    for w in sorted(wnids)[20:30]: shutil.rmtree(tmp_path / "train" / w)
    with pytest.raises(FileNotFoundError, match=r"13 of the 100 .*: n\d{8}, n\d{8}, n\d{8}, n\d{8}, n\d{8}, \.\.\.$"):
        load_dataset("imagenet100", tmp_path)

def test_bad_data_roots_fail_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir(); (tmp_path / "file.txt").write_text("x")
    for name in ("lsun", "imagenet", "imagenet100"):
        for root in (tmp_path / "nowhere", tmp_path / "file.txt"):
            with pytest.raises(FileNotFoundError, match="--data-root"): load_dataset(name, root)
        with pytest.raises(ValueError, match="--data-root"): load_dataset(name)
    with pytest.raises(FileNotFoundError, match="no image files"): load_dataset("lsun", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no class folders"): load_dataset("imagenet", tmp_path / "empty")
    with pytest.raises(ValueError, match="lsun_churches, imagenet, imagenet100, lsun"): load_dataset("lsun_bedroom")

def test_shipped_imagenet100_list():
    wnids = imagenet100_wnids()
    assert len(wnids) == 100 and len(set(wnids)) == 100
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    assert wnids[:3] == ["n02869837", "n01749939", "n02488291"] and wnids[-1] == "n02090622"  # CMC's order
