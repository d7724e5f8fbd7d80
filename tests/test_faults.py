"""Faults: atomic checkpoints, runs killed with SIGKILL (at named fault points and at random moments) and resumed end
bit for bit where a straight run ends, NaN stops"""
import json, os, random, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
import selfguide.runs as runs, selfguide.train as sel_train
from selfguide.cli import main
from selfguide.train import train
from selfguide.runs import save_checkpoint, update_manifest, read_manifest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--dataset", "digits", "--preset", "tiny", "--patch-size", "4", "--batch-size", "16", "--steps", "16",
        "--ckpt-every", "2", "--guidance", "online", "--clusters", "4", "--sk-hidden", "32", "--sk-dim", "8",
        "--monitor-images", "64", "--no-sk-mask", "--seed", "5"]

def test_failing_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(ck, step=1, w=torch.ones(3))
    def broken(obj, f, *a, **k):                                   # writes half a checkpoint, then fails
        f.write(b"PK half a checkpoint"); raise OSError("disk full")
    monkeypatch.setattr(runs.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"): save_checkpoint(ck, step=2, w=torch.zeros(3))
    assert torch.load(ck)["step"] == 1 and [p.name for p in ck.parent.iterdir()] == ["last.pt"]

def test_failing_manifest_write_keeps_the_previous_manifest(tmp_path, monkeypatch):
    update_manifest(tmp_path, metrics=dict(a=1))
    def broken(fd): raise OSError("disk full")                    # after the new text is written, before the rename
    monkeypatch.setattr(runs.os, "fsync", broken)
    with pytest.raises(OSError): update_manifest(tmp_path, metrics=dict(b=2))
    monkeypatch.undo()
    assert read_manifest(tmp_path) == dict(metrics=dict(a=1))
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]

def _cmd(out): return [sys.executable, "-m", "selfguide", "train", *ARGS, "--out-dir", str(out)]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
ENV.pop("SELFGUIDE_FAULT_POINTS", None)

class Stopping:
    "A training run that stops itself at every fault point (`selfguide.runs.fault_point`) until continued or killed"
    def __init__(self, out, points):
        self.points, self.out = points, out
        self.p = subprocess.Popen(_cmd(out), env={**ENV, "SELFGUIDE_FAULT_POINTS": str(points)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.lines, self.stopped = self.wait(), True

    def wait(self, timeout=300) -> list[str]:
        "Wait until the run stops at its next fault point; the points it announced so far"
        deadline = time.monotonic() + timeout
        while not (ws := os.waitpid(self.p.pid, os.WUNTRACED | os.WNOHANG))[0]:
            if time.monotonic() > deadline: self.p.kill(); self.p.wait(); raise TimeoutError("no fault point")
            time.sleep(0.005)
        assert os.WIFSTOPPED(ws[1]), f"the run ended (wait status {ws[1]}) before its next fault point"
        return self.points.read_text().splitlines()

    def go(self):
        "Let the run go on from its fault point (SIGCONT); it stops again at the next one"
        self.p.send_signal(signal.SIGCONT); self.stopped = False

    def until(self, *tail) -> None:
        "Continue point by point until the last points announced are `tail`; it stays stopped there"
        while self.lines[-len(tail):] != list(tail): self.go(); self.lines, self.stopped = self.wait(), True

    def kill(self) -> tuple:
        "SIGKILL it; assert the kill, not an exit, ended it; (last.pt's step, checkpoint files, last point, stopped)"
        self.p.send_signal(signal.SIGKILL); self.p.wait()
        assert self.p.returncode == -signal.SIGKILL and not (self.out / "manifest.json").exists()   # unfinished
        ck = self.out / "checkpoints"
        return (torch.load(ck / "last.pt", weights_only=False)["step"], sorted(f.name for f in ck.iterdir()),
                self.points.read_text().splitlines()[-1], self.stopped)

def test_sigkill_at_fault_points_and_random_moments_then_resume_is_bit_exact(tmp_path):
    "Five kills: at a step, in a checkpoint write before its rename, right after it, and twice at a random moment"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cmd(straight), env=ENV, check=True, capture_output=True)        # no fault points: never stops
    rng, at = random.Random(0), []
    run = Stopping(killed, tmp_path / "points1"); run.until("step 3")
    at.append(run.kill()); assert at[-1] == (2, ["last.pt"], "step 3", True)              # resumes from step 2
    run = Stopping(killed, tmp_path / "points2"); run.until("step 5", "last.pt written")  # checkpoint 6, unrenamed
    at.append(run.kill()); assert at[-1] == (4, ["last.pt", "last.pt.tmp"], "last.pt written", True)
    run = Stopping(killed, tmp_path / "points3"); run.until("step 7", "last.pt written", "last.pt renamed")
    at.append(run.kill()); assert at[-1] == (8, ["last.pt"], "last.pt renamed", True)     # the rename done: step 8
    for i, tail in enumerate([("step 9",), ("step 11", "last.pt written")]):    # a random moment after a point,
        run = Stopping(killed, tmp_path / f"points{4 + i}"); run.until("step 8")    # before the next one at the latest
        t = time.monotonic(); run.until("step 9"); step_s = time.monotonic() - t   # a step, as this run takes it
        run.until(*tail); run.go(); time.sleep(rng.uniform(0, step_s))
        at.append(run.kill()); assert at[-1][0] in (8, 10, 12)
    print("killed at (last.pt's step, checkpoint files, last fault point, stopped there):", at)
    subprocess.run(_cmd(killed), env=ENV, check=True, capture_output=True)   # resume until done
    assert sorted(f.name for f in (killed / "checkpoints").iterdir()) == ["last.pt"]  # no leftover
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=False)
    assert any(k.startswith("bootstrap.") for k in a["model"]) and a["step"] == b["step"] == 16
    for part in ("model", "ema"):
        for k, v in a[part].items(): assert torch.equal(v, b[part][k]), f"{part}.{k} differs"
    for i, s in a["opt"]["state"].items():
        for k, v in s.items(): assert torch.equal(v, b["opt"]["state"][i][k]), f"opt state {i}.{k} differs"
    assert a["losses"] == b["losses"] and a["sk_losses"] == b["sk_losses"] and a["monitor"] == b["monitor"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert (straight / "loss.csv").read_text() == (killed / "loss.csv").read_text()

SMALL = dict(dataset="digits", preset="tiny", patch_size=4, batch_size=16, guidance="none", steps=12, ckpt_every=4,
             seed=2)

def _last(out):
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt"]                      # no temporary file left
    return torch.load(ck / "last.pt", weights_only=False)

def _finite(ck):
    return all(v.isfinite().all() for part in ("model", "ema") for v in ck[part].values() if v.is_floating_point())

def test_nan_loss_names_its_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = sel_train.get_path, []
    def nan_at_5(name):                                       # the loss of step 5 is NaN (the read-out comes at step 7)
        path = real(name); loss = path.loss
        def bad(*a, **k):
            calls.append(1); v = loss(*a, **k)
            return v * float("nan") if len(calls) == 6 else v
        path.loss = bad; return path
    monkeypatch.setattr(sel_train, "get_path", nan_at_5)
    with pytest.raises(FloatingPointError, match="loss is nan at step 5; .*last.pt keeps the last good state"):
        train(**SMALL, out_dir=str(tmp_path / "r"))
    ck = _last(tmp_path / "r")
    assert ck["step"] == 4 and len(ck["losses"]) == 4 and _finite(ck)
    assert not (tmp_path / "r" / "manifest.json").exists()

def test_inf_weights_before_a_checkpoint_are_never_saved(tmp_path, monkeypatch):
    real, calls = sel_train.ema_update, []
    def inf_at_7(ema, model, decay):                          # step 7's update makes a weight inf; its loss was finite
        real(ema, model, decay); calls.append(1)
        if len(calls) == 8:
            with torch.no_grad(): model.patch_embed.weight[0].fill_(float("inf"))
    monkeypatch.setattr(sel_train, "ema_update", inf_at_7)
    with pytest.raises(FloatingPointError, match="weights are not finite after step 7 .*patch_embed.weight"):
        train(**SMALL, out_dir=str(tmp_path / "r"))
    ck = _last(tmp_path / "r")
    assert ck["step"] == 4 and _finite(ck)

def test_cli_exits_non_zero_on_nan(tmp_path, monkeypatch):
    real = sel_train.get_path
    def nan_path(name):
        path = real(name); loss = path.loss; path.loss = lambda *a, **k: loss(*a, **k) * float("nan"); return path
    monkeypatch.setattr(sel_train, "get_path", nan_path)
    argv = ["train", "--dataset", "digits", "--preset", "tiny", "--patch-size", "4", "--batch-size", "16",
            "--guidance", "none", "--steps", "3", "--out-dir", str(tmp_path / "r")]
    with pytest.raises((FloatingPointError, SystemExit)) as e: main(argv)   # an exception escaping main exits 1
    assert e.type is FloatingPointError or e.value.code not in (0, None)
    assert "at step 0" in str(e.value) or e.type is SystemExit
