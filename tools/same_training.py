"""Does this worktree train exactly like git revision REV? Before a revision joins `selfguide.ledger.SAME_TRAINING`.

Trains the same short runs (digits, tiny U-ViT, 40 steps, batch 32: every guidance mode and the released protocol)
with the code of REV (a temporary git worktree) and with this worktree's, then compares every tensor of every saved
checkpoint (weights, EMA, optimizer state, RNG states) bitwise. Prints one line per run and both `code_rev`s; exits 1
when any tensor differs or a run fails. About 3 minutes on one thread.

    OMP_NUM_THREADS=1 .venv/bin/python tools/same_training.py --against HEAD
"""
import argparse, os, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = "--dataset digits --preset tiny --steps 40 --batch-size 32 --seed 3 --monitor-every 20 --ckpt-every 20".split()
RUNS = {"none": ["--guidance", "none"], "class": ["--guidance", "class"],
        "offline": ["--guidance", "offline", "--init", "{out}/none", "--clusters", "10"],
        "online": ["--guidance", "online", "--clusters", "10"],
        "released": ["--guidance", "online", "--clusters", "10", "--protocol", "released"],
        "online_patch": ["--guidance", "online_patch", "--clusters", "10"]}


def train_all(src: Path, out: Path) -> str:
    "Train every run of RUNS with the package in `src` into `out`; returns that code's `code_rev`"
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    env.setdefault("OMP_NUM_THREADS", "1")
    for name, opts in RUNS.items():
        cmd = [sys.executable, "-m", "selfguide", "train", *COMMON, "--out-dir", str(out / name),
               *(o.format(out=out) for o in opts)]
        r = subprocess.run(cmd, cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True)
        if r.returncode: sys.exit(f"{name} failed with the code in {src}: {r.stderr.strip().splitlines()[-1]}")
    return subprocess.run([sys.executable, "-c", "from selfguide.ledger import code_rev; print(code_rev())"],
                          env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True).stdout.strip()


def tensors(x, p=""):
    "Every tensor in a nested checkpoint, by its path"
    import torch
    if isinstance(x, torch.Tensor): yield p, x
    elif isinstance(x, dict):
        for k, v in x.items(): yield from tensors(v, f"{p}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x): yield from tensors(v, f"{p}[{i}]")


def compare(a: Path, b: Path) -> int:
    "Print, per run, how many checkpoint tensors differ between `a` and `b`; returns the number that differ"
    import torch
    bad = 0
    for name in RUNS:
        files = sorted(f.relative_to(a / name) for f in (a / name).rglob("*.pt"))
        n = diff = 0
        for f in files:
            x, y = (dict(tensors(torch.load(d / name / f, map_location="cpu", weights_only=False))) for d in (a, b))
            if x.keys() != y.keys(): diff += len(x.keys() ^ y.keys())
            for k in x.keys() & y.keys(): n += 1; diff += not torch.equal(x[k], y[k])
        print(f"{name}: {len(files)} checkpoint file(s), {n} tensors, {diff} differ"); bad += diff + (not files)
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--against", default="HEAD", help="the git revision to compare with (default HEAD)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp, old = Path(tmp), Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), a.against], cwd=ROOT, check=True)
        try:
            revs = train_all(old, tmp / "runs_old"), train_all(ROOT, tmp / "runs_new")
            bad = compare(tmp / "runs_old", tmp / "runs_new")
        finally: subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    print(f"code_rev {revs[0]} ({a.against}) -> {revs[1]} (this worktree): "
          + ("trains exactly alike" if not bad else f"{bad} tensors differ"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
