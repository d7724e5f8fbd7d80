"Faults: atomic checkpoints, runs killed with SIGKILL and resumed end bit for bit where a straight run ends, NaN stops"
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

def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cmd(straight), env=ENV, check=True, capture_output=True)
    step_s = json.loads((straight / "manifest.json").read_text())["timings"]["step_s_median"]
    rng, kills, at = random.Random(0), 0, []
    while kills < 3:                 # start, wait for its first checkpoint write, kill within the next 3 steps' time
        ck = killed / "checkpoints" / "last.pt"
        before = ck.stat().st_mtime_ns if ck.exists() else None
        p = subprocess.Popen(_cmd(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and (not ck.exists() or ck.stat().st_mtime_ns == before): time.sleep(0.01)
        time.sleep(rng.uniform(0, 3 * step_s))
        if p.poll() is not None: break                              # it finished first
        p.send_signal(signal.SIGKILL); p.wait(); kills += 1
        at.append((torch.load(ck, weights_only=False)["step"], sorted(f.name for f in ck.parent.iterdir())))
    print("killed after (checkpoint step, files):", at)
    subprocess.run(_cmd(killed), env=ENV, check=True, capture_output=True)   # resume until done
    assert kills == 3 and sorted(f.name for f in (killed / "checkpoints").iterdir()) == ["last.pt"]  # no leftover
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
