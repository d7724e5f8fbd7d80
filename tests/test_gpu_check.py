"""benchmarks/gpu_check.py cannot rot without a GPU: its CPU preset (`make gpu-check DEVICE=cpu QUICK=1`) runs every
part here (the tiny U-ViT; the sync part says it needs CUDA), with a stand-in for the official U-ViT file (theirs is
never committed), and must write each CSV and summary.md with the numbers in them."""
import csv, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STANDIN = '''"""Stand-in with the interface of baofff/U-ViT libs/uvit.py (ATTENTION_MODE, their signature)."""
import torch.nn as nn
from selfguide.uvit import UViT as Ours
ATTENTION_MODE = "flash"

class UViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                 qkv_bias=False, num_classes=-1, conv=True, **kw):
        super().__init__()
        self.net = Ours(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
                        num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                        num_classes=max(num_classes - 1, 0), cond_slot=num_classes > 0, conv=conv)
    def forward(self, x, timesteps, y=None): return self.net(x, timesteps / 1000, y)
'''


def test_make_gpu_check_runs_the_script_with_the_quick_cpu_flags():
    r = subprocess.run(["make", "-n", "gpu-check", "DEVICE=cpu", "QUICK=1", "OUT=/somewhere"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmd = " ".join(r.stdout.replace("\\\n", " ").split())
    assert "benchmarks/gpu_check.py --device cpu --quick --out /somewhere" in cmd, cmd


def test_gpu_check_quick_on_cpu_writes_every_part(tmp_path):
    (tmp_path / "official").mkdir(); (tmp_path / "official" / "uvit.py").write_text(STANDIN)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out),
                        "--official", str(tmp_path / "official" / "uvit.py")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rows = {p: list(csv.DictReader(open(out / f"{p}.csv"))) for p in ("throughput", "official", "sync", "cli")}
    log = r.stdout[-3000:]
    eager = [x for x in rows["throughput"] if x["compile"] == "False"]
    assert {x["mode"] for x in eager} == {"none", "online", "online amortise 4"}, log
    for x in eager:
        assert x["status"] == "ok" and float(x["images_per_s"]) > 0 and float(x["tflop_per_step"]) > 0, x
    assert [x["case"] for x in rows["official"]] == ["uncond", "cond"], log
    assert all(x["status"] == "ok" and float(x["ratio"]) > 0 for x in rows["official"]), rows["official"]
    assert len(rows["sync"]) == 3 and all("no CUDA" in x["status"] for x in rows["sync"])
    cli = {x["stage"]: x for x in rows["cli"]}
    assert cli["train, SIGKILL mid-run"]["status"] == "ok", rows["cli"]
    assert cli["resumed == straight"]["status"] == "ok: bitwise equal", cli["resumed == straight"]
    assert float(cli["sample dopri5"]["nfe"]) > 0 and float(cli["sample dpm_solver"]["nfe"]) == 10, rows["cli"]
    summary = (out / "summary.md").read_text()
    for h in ("## 1.", "## 2.", "## 3.", "## 4.", "| cpu (", "bitwise equal", "Seconds per part"): assert h in summary
    assert "not measured" not in summary


def _shape(text: str) -> list[str]:
    "Section titles and table headers of a summary.md"
    lines = text.splitlines()
    return [l for i, l in enumerate(lines)
            if l.startswith("## ") or (i + 1 < len(lines) and lines[i + 1].startswith("|---"))]


def test_committed_gpu_summary_has_the_shape_the_script_writes(tmp_path):
    "outputs/bench/gpu/summary.md (README's GPU table: 'not measured' until a GPU fills it) matches the script's tables"
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--placeholder", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ours, committed = (_shape(p.read_text()) for p in (tmp_path / "summary.md", ROOT / "outputs/bench/gpu/summary.md"))
    assert len(ours) == 9 and committed == ours
