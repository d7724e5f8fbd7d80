"""Tiny fixtures that tests build in a temporary folder: an LSUN-style LMDB, an image folder, ImageNet, an SD-VAE, a
few digits as an .npz."""
import hashlib, io
from pathlib import Path
import numpy as np
from PIL import Image

SIZES = [(37, 53), (300, 200), (64, 64), (53, 37), (129, 96), (200, 300)]  # (width, height), odd on purpose

def _image(w: int, h: int, rng) -> Image.Image:
    "A smooth colour gradient plus noise, so that crops and codecs have something to keep"
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1), np.full((h, w), rng.integers(0, 256))], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))

def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO(); im.save(buf, fmt); return buf.getvalue()

def make_lsun_lmdb(path, n: int = 6, corrupt: int = 1, seed: int = 0) -> Path:
    "An LMDB laid out like LSUN's (40-hex ids as keys, WebP bytes as values): `n` images, then `corrupt` garbage ones"
    import lmdb
    path, rng = Path(path), np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    with lmdb.open(str(path), map_size=1 << 26) as env, env.begin(write=True) as txn:
        for i in range(n + corrupt):
            key = hashlib.sha1(f"{seed}-{i}".encode()).hexdigest().encode()
            txn.put(key, _encode(_image(*SIZES[i % len(SIZES)], rng), "WEBP") if i < n else rng.bytes(100 + i))
    return path

def make_digits_npz(path, n: int = 32) -> Path:
    "The first `n` of scikit-learn's digits (16x16, labelled) as an .npz: short epochs, every image seen again soon"
    from selfguide.data import load_digits
    d = load_digits()
    np.savez(path, images=d.images[:n, 0].numpy(), labels=d.labels[:n].numpy())
    return Path(path)

def make_image_folder(path, n: int = 5, seed: int = 0) -> Path:
    "A folder of `n` PNG and JPEG images of odd sizes, every third one in a sub-folder"
    path, rng = Path(path), np.random.default_rng(seed)
    for i in range(n):
        f = path / ("sub" if i % 3 == 2 else "") / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        f.parent.mkdir(parents=True, exist_ok=True)
        _image(*SIZES[i % len(SIZES)], rng).save(f)
    return path

def make_imagenet(path, wnids, per_class: int = 2, seed: int = 0) -> Path:
    "An ImageNet-style train folder: one folder of `per_class` JPEGs per WordNet id"
    path, rng = Path(path), np.random.default_rng(seed)
    for w in wnids:
        (path / w).mkdir(parents=True, exist_ok=True)
        for j in range(per_class): _image(40 + 3 * j, 30 + j, rng).save(path / w / f"{w}_{j}.JPEG")
    return path

def make_vae(path, **kw) -> Path:
    "A random-init diffusers AutoencoderKL with a tiny config (downsampling 2x, 4 latent channels), saved as distributed"
    import torch
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                  sample_size=32, **kw).save_pretrained(path)
    return Path(path)

def make_inception_standin(path) -> Path:
    "A TorchScript file with clean-fid's Inception interface (`layers`, `output`) and 16 random features"
    import warnings, torch
    from torch import nn
    class StandIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(6), nn.Flatten(), nn.Linear(108, 16))
            self.output = nn.Linear(16, 10)
        def forward(self, x): return self.output(self.layers(x))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, but it is clean-fid's format
        torch.jit.save(torch.jit.script(StandIn()), path)
    return Path(path)
