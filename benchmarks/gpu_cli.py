"""gpu_check's part 4: the real command line end to end.

`torchrun --standalone --nproc_per_node 1 -m selfguide train` (as `python -m torch.distributed.run`, which is what
the `torchrun` script runs) on an .npz of random 32x32x4 latents with the paper recipe (its model, online guidance,
K 300 at full size) in a process group of its own, SIGKILLed as soon as its first checkpoint exists (mid-run: the
next one is steps away), then the same command again, which resumes; meanwhile the same `selfguide train` runs
straight through twice in this process (`selfguide.cli.main`: the CLI's parser and code without a process start).
The resumed run must match the straight one bitwise (loss.csv and the final model and EMA weights), or, where the
two straight runs differ (GPU kernels with atomics), by at most `FLOOR_FACTOR` times as much (the row says which).
Then `selfguide sample` (two processes) from the resumed run with dopri5 and DPM-Solver, decoded by a tiny random
SD-VAE stand-in (tests/fixtures.py), NFE from the .npz. With one GPU the CLI starts no process group
(`selfguide.distributed.launched()` needs WORLD_SIZE > 1), so `nccl_smoke` joins one of world size 1 in this process
and checks `GlobalBatchNorm` (a differentiable all_reduce) and an `all_reduce` over it against plain BatchNorm1d.
"""
from __future__ import annotations
import csv, os, signal, socket, subprocess, sys, time
from pathlib import Path
import numpy as np
import torch

FLOOR_FACTOR = 4  # where two straight runs differ (GPU kernels with atomics), the resumed one may differ this much more


def make_latents(path: Path, n: int, seed: int = 0) -> Path:
    "An .npz of `n` random latents (N, 4, 32, 32), unit scale like scaled SD-VAE latents, no labels"
    z = np.random.default_rng(seed).standard_normal((n, 4, 32, 32)).astype(np.float32)
    np.savez(path, latents=z)
    return path


def env(threads: int) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    pp = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=pp, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                CUBLAS_WORKSPACE_CONFIG=":4096:8", MPLBACKEND="Agg")


def launch(args: list, log: Path, threads: int, torchrun: bool = True) -> subprocess.Popen:
    "A selfguide command in a new process group (so that a kill reaches torchrun's worker too), output to `log`"
    pre = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"] if torchrun else []
    return subprocess.Popen([sys.executable, *pre, "-m", "selfguide", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env(threads), start_new_session=True, cwd=log.parent)


def finish(p: subprocess.Popen, log: Path, deadline: float) -> None:
    "Wait for `p` until `deadline`; kill it then; raise with the log's last line when it failed"
    try: p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); p.wait()
        raise TimeoutError(f"still running at the part's deadline ({_last(log)})")
    if p.returncode != 0: raise RuntimeError(f"exit status {p.returncode}: {_last(log)}")


def _last(log: Path) -> str:
    lines = [l for l in Path(log).read_text(errors="replace").splitlines() if l.strip()]
    errs = [l for l in lines if "Error" in l or "error:" in l]
    return (errs or lines or ["no output"])[-1].strip()[:300]


def train_args(c: dict, run: Path, ckpt_every: int) -> list:
    return ["train", "--dataset", "latents", "--data-root", str(c["latents"]), "--preset", c["preset"],
            "--patch-size", str(c["patch"]), "--batch-size", str(c["batch"]), "--steps", str(c["steps"]),
            "--warmup-steps", "5", "--monitor-images", str(c["batch"]), "--device", c["device"],
            "--ckpt-every", str(ckpt_every), "--out-dir", str(run), *c["extra"]]


def kill_resume(c: dict, tmp: Path, deadline: float, row) -> Path:
    "Killed + resumed run, a straight one beside the resumed one; rows through `row(stage, seconds, status, **kw)`"
    procs = []
    try: return _kill_resume(c, tmp, deadline, row, procs)
    finally:
        for p in procs:
            if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait()


def cli(args: list) -> None:
    "`selfguide ARGS` in this process (its parser and code; no process start): raise when it exits with an error"
    from selfguide.cli import main
    try: main([str(a) for a in args])
    except SystemExit as e:
        if e.code: raise RuntimeError(f"selfguide {args[0]} exited with status {e.code}") from None


def _kill_resume(c, tmp, deadline, row, procs) -> Path:
    killed, straight, t0 = tmp / "killed", tmp / "straight", time.time()
    p = launch(train_args(c, killed, c["ckpt_every"]), tmp / "killed.log", c["threads"]); procs.append(p)
    ck = killed / "checkpoints" / "last.pt"
    while not ck.exists() and p.poll() is None and time.time() < deadline: time.sleep(0.01)
    alive = p.poll() is None
    if alive: os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = (killed / "loss.csv").exists()
    if not ck.exists() or done or not alive:
        why = "finished before the kill" if done else f"no checkpoint ({_last(tmp / 'killed.log')})"
        raise RuntimeError(f"not killed mid-run: {why}")
    at = torch.load(ck, map_location="cpu", mmap=True, weights_only=False)["step"]
    row("train, SIGKILL mid-run", time.time() - t0, "ok", detail=f"killed after its checkpoint at step {at} of "
        f"{c['steps']}", cmd="torchrun --standalone --nproc_per_node 1 -m selfguide " + " ".join(
            train_args(dict(c, latents="LATENTS.npz"), Path("RUN"), c["ckpt_every"])))
    t1 = time.time()
    r = launch(train_args(c, killed, c["steps"]), tmp / "resumed.log", c["threads"]); procs.append(r)
    for run in (straight, tmp / "straight_again"):             # meanwhile the reference twice, in this process
        cli(train_args(c, run, c["steps"]))
    row("train, straight twice (this process, beside the resumed one)", time.time() - t1, "ok",
        detail=f"steps 0..{c['steps']}")
    finish(r, tmp / "resumed.log", deadline)
    row("train, resumed", time.time() - t1, "ok", detail=f"steps {at}..{c['steps']}, the same command")
    row("resumed == straight", 0.0, *compare(killed, straight, tmp / "straight_again"))
    return killed


def difference(a: Path, b: Path) -> tuple[bool, float, float]:
    "(bitwise equal, max |loss difference|, relative RMS difference of model and EMA weights) of run folders a and b"
    la, lb = (np.array([float(r["loss"]) for r in csv.DictReader(open(r / "loss.csv"))]) for r in (a, b))
    if la.shape != lb.shape: raise ValueError(f"loss.csv of {a.name} has {len(la)} rows, of {b.name} {len(lb)}")
    ca, cb = (torch.load(r / "checkpoints" / "last.pt", map_location="cpu", mmap=True, weights_only=False)
              for r in (a, b))
    d2 = n2 = 0.0
    for k in ("model", "ema"):
        for n, y in cb[k].items():
            if y.is_floating_point():
                x, y = ca[k][n].double(), y.double(); d2 += float((x - y).pow(2).sum()); n2 += float(y.pow(2).sum())
    same = (a / "loss.csv").read_text() == (b / "loss.csv").read_text() and d2 == 0
    return same, float(np.max(np.abs(la - lb))), (d2 / n2) ** 0.5


def compare(resumed: Path, straight: Path, again: Path) -> tuple[str, str]:
    "(status, detail): the resumed run against the straight one, and two straight runs against each other (the floor)"
    same, dl, dw = difference(resumed, straight)
    f_same, fl, fw = difference(again, straight)
    detail = (f"resumed vs straight: loss max |diff| {dl:.2e}, weights relative RMS {dw:.2e}; two straight runs: "
              f"{fl:.2e}, {fw:.2e}")
    if same: return "ok: bitwise equal", detail
    if not f_same and dl <= FLOOR_FACTOR * fl + 1e-6 and dw <= FLOOR_FACTOR * fw:
        return f"ok: within {FLOOR_FACTOR}x two straight runs' difference (kernels not deterministic)", detail
    return "FAIL: the resumed run left the straight one's trajectory", detail


def sample_all(c: dict, run: Path, vae: Path, tmp: Path, deadline: float, row) -> None:
    "`selfguide sample` from `run` with dopri5 and with DPM-Solver, two processes side by side (killed at `deadline`)"
    jobs = {}
    for solver, extra in (("dopri5", []), ("dpm_solver", ["--steps", str(c["dpm_steps"])])):
        out = tmp / f"samples_{solver}.npz"
        args = ["sample", "--run", str(run), "--n", str(c["n_samples"]), "--batch-size", str(c["n_samples"]),
                "--solver", solver, *extra, "--vae", str(vae), "--device", c["device"], "--out", str(out)]
        cmd = " ".join(["selfguide", *args[:2], "RUN", *args[3:-5], "VAE", *args[-4:-1], "OUT.npz"])
        log = tmp / f"sample_{solver}.log"
        jobs[solver] = (launch(args, log, c["threads"], torchrun=False), log, out, time.time(), cmd)
    for solver, (p, log, out, t0, cmd) in jobs.items():
        try:
            finish(p, log, deadline)
            z = np.load(out)
            row(f"sample {solver}", time.time() - t0, "ok", nfe=float(z["nfe"]),
                detail=f"{len(z['images'])} images {z['images'].shape[1:]}", cmd=cmd)
        except Exception as e: row(f"sample {solver}", time.time() - t0, f"error: {type(e).__name__}: {e}", cmd=cmd)


def nccl_smoke(dev) -> str:
    "A process group of world size 1 (nccl on CUDA, gloo on a CPU): GlobalBatchNorm and all_reduce against BatchNorm1d"
    import torch.distributed as dist
    from selfguide.distributed import GlobalBatchNorm
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    cuda = dev.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            **({"device_id": dev} if cuda else {}))
    try:
        x = torch.randn(64, 32, 8, device=dev, requires_grad=True)
        gbn, bn = GlobalBatchNorm(32).to(dev), torch.nn.BatchNorm1d(32).to(dev)
        with torch.autocast(dev.type, torch.bfloat16, enabled=cuda):
            y1, y2 = gbn(x), bn(x)
        w = torch.randn(y1.shape, device=dev)
        (g1,), (g2,) = (torch.autograd.grad((y.float() * w).sum(), x) for y in (y1, y2))
        r = torch.arange(4.0, device=dev); dist.all_reduce(r)
        err = float(max((y1 - y2).abs().max().detach(), (g1 - g2).abs().max() / g2.abs().max()))
        if err > 2e-2 or r.tolist() != [0.0, 1.0, 2.0, 3.0]: raise RuntimeError(f"GlobalBatchNorm differs by {err:.2e}")
        return f"{'nccl' if cuda else 'gloo'}: GlobalBatchNorm = BatchNorm1d within {err:.1e} (forward, grad)"
    finally: dist.destroy_process_group()
