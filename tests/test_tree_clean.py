"""`make test` leaves the tree as it found it: tools/tree_state.py records the tree before the notebooks and tests and
fails `make test` after them if anything changed; the notebooks' smoke runs write under temporary folders."""
import importlib.util, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tree_state", ROOT / "tools" / "tree_state.py")
tree_state = importlib.util.module_from_spec(spec); spec.loader.exec_module(tree_state)

def git(repo, *args): subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                                     check=True, capture_output=True)

def check(repo, record):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "tree_state.py"), "check", str(record)], cwd=repo,
                          capture_output=True, text=True)

def test_the_record_sees_every_change_a_notebook_could_make(tmp_path):
    repo, record = tmp_path / "repo", tmp_path / "before"
    (repo / "outputs" / "t").mkdir(parents=True)
    (repo / ".gitignore").write_text("outputs/**/checkpoints/\n")
    (repo / "outputs" / "t" / "table.csv").write_text("a\n1\n"); (repo / "notes.md").write_text("x\n")
    git(repo, "init", "-q"); git(repo, "add", "."); git(repo, "commit", "-qm", "c")
    (repo / "notes.md").write_text("edited before the tests\n")            # a change of someone's, already there
    (repo / "outputs" / "t" / "checkpoints").mkdir()
    subprocess.run([sys.executable, str(ROOT / "tools" / "tree_state.py"), "save", str(record)], cwd=repo, check=True)
    assert check(repo, record).returncode == 0 and check(repo, record).stdout == ""  # silent when nothing changed
    for change in (lambda: (repo / "outputs" / "t" / "table.csv").write_text("a\n2\n"),        # a tracked result
                   lambda: (repo / "notes.md").write_text("rewritten by a test\n"),            # a modified file again
                   lambda: (repo / "outputs" / "t" / "new.png").write_bytes(b"png"),           # an untracked file
                   lambda: (repo / "outputs" / "t" / "checkpoints" / "last.pt").write_bytes(b"w")):  # an ignored one
        saved = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
        change()
        r = check(repo, record)
        assert r.returncode == 1 and "changed the working tree" in r.stdout, r.stdout
        for p in [p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts and p not in saved]: p.unlink()
        for p, b in saved.items(): p.write_bytes(b)
    os.utime(repo / "outputs" / "t" / "table.csv")  # same content, touched: git's status and the record agree
    assert check(repo, record).returncode == 0

def test_online_evidence_smoke_run_writes_nothing_into_outputs(tmp_path):
    """The notebook the issue caught rewriting outputs/online/: its smoke run (IN_TEST) reads the committed runs there
    and writes its tables to a temporary folder. (`make test` checks every notebook and test, tree-wide.)"""
    before = tree_state.tree_state(ROOT, ["outputs/online"])
    env = {**os.environ, "IN_TEST": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([str(Path(sys.executable).parent / "nbdev-test"), "nbs/online_evidence.ipynb"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert tree_state.tree_state(ROOT, ["outputs/online"]) == before
