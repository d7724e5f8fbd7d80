"""benchmarks/cpu_limit.py cannot rot: its quick mode (in this process, the side-by-side cases left out: they start
two processes) writes cpu_limit.csv with every kind of row, and benchmarks/summary.py renders its tables."""
import sys
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import common, cpu_limit, summary  # noqa: E402
from selfguide.config import CPU_RECIPES  # noqa: E402


def test_quick_mode_writes_every_kind_of_row(tmp_path, monkeypatch):
    plan = cpu_limit.plan
    monkeypatch.setattr(common, "OUT", common.OUT)        # --quick moves it to outputs/bench/quick: put it back after
    keep = lambda k: not k["pair"] and k["phase"] == "none"
    monkeypatch.setattr(cpu_limit, "plan", lambda args: [k for k in plan(args) if keep(k)])
    threads = torch.get_num_threads()
    try: cpu_limit.main(["--quick", "--timed", "1", "--out", str(tmp_path)])
    finally: torch.set_num_threads(threads)                    # main() measures at 1 thread: the suite's stays
    rows = common.read_csv("cpu_limit.csv", tmp_path)
    assert not [r for r in rows if r.get("error")], rows
    kinds = {k: [r for r in rows if r["kind"] == k] for k in ("matmul", "step", "run", "profile")}
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
    mm = {r["n_threads"]: float(r["gflops"]) for r in kinds["matmul"] if r["case"].startswith("torch.mm")}
    assert set(mm) == {"1", "2"} and min(mm.values()) > 0, mm
    for r in kinds["step"]:                               # achieved GFLOP/s against the matmul at its thread count
        assert r["recipe"] == "cpu16" and r["flops_from"] == "math twin", r
        gf = float(r["gflop_per_step"]) / (float(r["step_ms"]) / 1e3)
        assert abs(float(r["gflops"]) / gf - 1) < 0.01, r
        assert float(r["matmul_gflops"]) == mm[r["n_threads"]], r
        assert abs(float(r["utilisation"]) / (gf / mm[r["n_threads"]]) - 1) < 0.01, r
        assert 0 <= float(r["load_share"]) < 1 and r["cpu"], r
    runs = {r["variant"].split(":")[0]: r for r in kinds["run"]}
    assert {"baseline", "attention math", "flush denormal"} <= set(runs), runs
    assert float(runs["baseline"]["x_baseline"]) == 1.0
    assert int(runs["baseline"]["run_steps"]) == CPU_RECIPES["cpu16"]["steps"]
    monkeypatch.setattr(common, "OUT", tmp_path)          # summary.md (make bench's last step) renders the tables
    summary.main()
    md = (tmp_path / "summary.md").read_text()
    for h in ("### The CPU step against this CPU's limit", "| matmul |", "| recipe | phase | variant |",
              "Whole runs", "Profile"): assert h in md, md
