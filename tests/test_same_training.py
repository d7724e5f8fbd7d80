"""tools/same_training.py: its comparison finds a tensor that differs anywhere in a checkpoint, and only then."""
import importlib.util
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("same_training", ROOT / "tools" / "same_training.py")
st = importlib.util.module_from_spec(spec); spec.loader.exec_module(st)

def _runs(root: Path, bump: str | None = None):
    for name in st.RUNS:
        ck = dict(model={"w": torch.ones(3)}, opt=dict(state=[{"exp_avg": torch.zeros(2)}]), rng=torch.arange(4))
        if name == bump: ck["opt"]["state"][0]["exp_avg"][1] = 1e-12       # one number, deep in the optimizer state
        (root / name).mkdir(parents=True); torch.save(ck, root / name / "last.pt")

def test_equal_checkpoints_count_nothing_and_one_changed_number_counts(tmp_path, capsys):
    _runs(tmp_path / "a"); _runs(tmp_path / "b"); _runs(tmp_path / "c", bump="released")
    assert st.compare(tmp_path / "a", tmp_path / "b") == 0
    assert st.compare(tmp_path / "a", tmp_path / "c") == 1
    assert "released: 1 checkpoint file(s), 3 tensors, 1 differ" in capsys.readouterr().out

def test_a_run_without_checkpoints_fails(tmp_path):
    _runs(tmp_path / "a"); _runs(tmp_path / "b")
    (tmp_path / "a" / "none" / "last.pt").unlink()
    assert st.compare(tmp_path / "a", tmp_path / "b") >= 1
