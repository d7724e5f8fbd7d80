"""The official U-ViT-L/2 and U-ViT-H/2 latent models' parameter names and shapes, loaded strictly by `from_official`.

Run: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/official_keys.py --official /tmp/U-ViT/libs/uvit.py`
where /tmp/U-ViT is a local copy of baofff/U-ViT (e.g. `git clone https://github.com/baofff/U-ViT /tmp/U-ViT`; at least
libs/uvit.py, libs/timm.py, configs/imagenet256_uvit_large.py and configs/imagenet256_uvit_huge.py; their code is never
committed here). Needs no einops or ml_collections (shims of the pieces used). About 2 minutes and 4.5 GB on a CPU.
For each config this builds their `libs/uvit.py` network with random weights (no download), loads its state dict into
ours with `selfguide.uvit.from_official` (strict: a name or shape ours lacks is an error), checks the architecture,
checks that both networks give the same velocity on the same input (a label and the null label; skip with
`--no-forward`, the H/2 pass takes a few seconds), and writes the names and shapes (no weights) to
tests/data/official_uvit_{l2,h2}_keys.txt, which tests/test_uvit.py checks our loader against.
"""
import argparse, hashlib, sys, types
from pathlib import Path
import torch
from uvit_official import load_official                 # imports their libs/uvit.py (an einops shim where needed)
from selfguide.uvit import from_official, TIME_SCALES

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data"
MODELS = {"l2": "imagenet256_uvit_large.py", "h2": "imagenet256_uvit_huge.py"}  # their ImageNet256 latent models
NNET = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
        "mlp_time_embed", "num_classes", "conv")        # what shapes the network (use_checkpoint does not)

def _ml_collections():
    "The piece of ml_collections their configs use: an attribute dict"
    class ConfigDict(dict):
        def __init__(self, initial_dictionary=None): super().__init__(initial_dictionary or {})
        __getattr__, __setattr__ = dict.__getitem__, dict.__setitem__
    return types.SimpleNamespace(ConfigDict=ConfigDict)

def read_config(path: Path) -> dict:
    "config.nnet of one of their config files, as keyword arguments of their UViT (name and use_checkpoint left out)"
    if not path.is_file(): sys.exit(f"official_keys: error: no config at {path} (copy U-ViT's configs/ beside libs/)")
    try: import ml_collections  # noqa: F401
    except ImportError: sys.modules["ml_collections"] = _ml_collections()
    scope = {}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    nnet = dict(scope["get_config"]().nnet)
    return {k: v for k, v in nnet.items() if k not in ("name", "use_checkpoint")}

def fixture_text(name: str, config: str, nnet: dict, sd: dict, source: bytes) -> str:
    "One line a tensor: name and shape (comma-separated); '#' lines say where it came from"
    blob = hashlib.sha1(b"blob %d\0" % len(source) + source).hexdigest()  # git's id of their libs/uvit.py
    nnet = {**nnet, "conv": nnet.get("conv", "True (their default)")}
    head = [f"# U-ViT-{name[0].upper()}/{name[1]}: baofff/U-ViT libs/uvit.py (git blob {blob}), configs/{config}",
            f"# nnet: {', '.join(f'{k}={nnet[k]}' for k in NNET)}",
            "# names and shapes of a freshly built network, no weights; written by benchmarks/official_keys.py"]
    return "\n".join(head + [f"{k} {','.join(map(str, v.shape))}" for k, v in sd.items()]) + "\n"

def check(name: str, theirs, nnet: dict, official, forward: bool) -> "UViT":
    "Ours from their state dict, strictly, with the architecture of `nnet`; the same velocity when `forward`"
    sd = theirs.state_dict()
    ours = from_official(sd).eval()                     # load_state_dict(strict=True) inside
    got = dict(img_size=ours.img_size, patch_size=ours.patch_size, in_chans=ours.in_chans, embed_dim=ours.embed_dim,
               depth=ours.depth, num_heads=ours.mid_block.attn.num_heads, num_classes=ours.num_classes + 1,
               mlp_ratio=ours.mid_block.mlp.fc1.out_features / ours.embed_dim,
               qkv_bias=ours.mid_block.attn.qkv.bias is not None,
               mlp_time_embed=not isinstance(ours.time_embed, torch.nn.Identity),
               conv=isinstance(ours.final_layer, torch.nn.Conv2d))
    want = {k: nnet.get(k, True if k == "conv" else None) for k in got}  # their UViT's conv defaults to True
    if got != want: sys.exit(f"official_keys: error: {name}: ours built {got}, their config says {want}")
    if set(ours.state_dict()) != {k.replace("patch_embed.proj.", "patch_embed.") for k in sd} | {"null_emb"}:
        sys.exit(f"official_keys: error: {name}: our tensors are not theirs renamed")
    if forward:
        g = torch.Generator().manual_seed(0)
        s = nnet["img_size"]
        x, t = torch.randn(2, nnet["in_chans"], s, s, generator=g), torch.rand(2, generator=g)
        y = torch.tensor([3, nnet["num_classes"] - 1])  # a class and their null label (the last row)
        official.ATTENTION_MODE = "flash"               # F.scaled_dot_product_attention, as ours
        with torch.no_grad():
            ref = theirs(x, t * ours.time_scale, y)     # their time input: 999 t (VP SDE, L) or n = 1000 t (DDPM, H)
            v = ours(x, t, y.clamp(max=ours.num_classes - 1), drop=y == nnet["num_classes"] - 1)
        err = ((v - ref).abs().max() / ref.abs().max()).item()
        print(f"{name}: max |ours - theirs| / max |theirs| = {err:.2e} (time scale {ours.time_scale:g})")
        if not err < 1e-5: sys.exit(f"official_keys: error: {name}: our velocity differs from theirs ({err:.2e})")
    return ours

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", type=Path, required=True, help="local copy of baofff/U-ViT libs/uvit.py")
    p.add_argument("--configs", type=Path, help="their configs/ folder (default: configs/ beside libs/)")
    p.add_argument("--models", default="l2,h2", help=f"which of {', '.join(MODELS)}")
    p.add_argument("--no-forward", dest="forward", action="store_false", help="keys and shapes only")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    official = load_official(args.official)
    configs = args.configs or args.official.resolve().parent.parent / "configs"
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        if name not in MODELS: sys.exit(f"official_keys: error: unknown model {name!r}; known: {', '.join(MODELS)}")
        nnet = read_config(configs / MODELS[name])
        torch.manual_seed(0)
        theirs = official.UViT(**nnet).eval()          # random weights, as their trainer starts
        with torch.no_grad():                           # positions and label rows at unit scale, as trained ones grow:
            theirs.pos_embed.normal_(); theirs.label_emb.weight.normal_()  # a row put in the wrong place shows
        ours = check(name, theirs, nnet, official, args.forward)
        n = sum(v.numel() for v in theirs.state_dict().values())
        print(f"{name}: {len(theirs.state_dict())} tensors, {n / 1e6:.1f}M parameters loaded strictly; "
              f"ours: depth {ours.depth}, width {ours.embed_dim}, {ours.mid_block.attn.num_heads} heads, "
              f"{ours.num_classes} classes, schedule time scale {ours.time_scale:g} "
              f"({[k for k, v in TIME_SCALES.items() if v == ours.time_scale][0]})")
        file = args.out / f"official_uvit_{name}_keys.txt"
        file.write_text(fixture_text(name, MODELS[name], nnet, theirs.state_dict(), args.official.read_bytes()))
        print(f"wrote {file}")
        del theirs, ours

if __name__ == "__main__":
    main()
