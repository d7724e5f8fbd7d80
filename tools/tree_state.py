"""`make test` leaves the tree as it found it: `save FILE` records the working tree before the notebooks and tests run,
`check FILE` compares after (silent when nothing changed; else the changed lines and exit status 1).

The record: `git status --porcelain` (tracked files changed, untracked files), the content hash of every changed or
untracked file (so a file modified before the run and rewritten by it counts), and the size and time of every ignored
file under outputs/ (checkpoints, logs). Paths after FILE restrict the record to them (default: the whole tree)."""
import hashlib, os, subprocess, sys
from pathlib import Path

def _git(root, *args) -> list[str]:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p]

def tree_state(root=".", paths=()) -> list[str]:
    "One line per fact of the working tree under `paths` (all of it when empty) that the notebooks and tests must keep"
    spec = ["--", *paths]
    status = _git(root, "status", "--porcelain", "-z", "--untracked-files=all", *spec)
    changed = _git(root, "ls-files", "-z", "-m", "-o", "--exclude-standard", *spec)
    out_spec = ["--", *([p for p in paths if Path(p).parts[:1] == ("outputs",)] if paths else ["outputs"])]
    ignored = _git(root, "ls-files", "-z", "-o", "-i", "--exclude-standard", *out_spec) if out_spec[1:] else []
    def content(p):
        f = Path(root, p)
        return hashlib.sha1(f.read_bytes()).hexdigest() if f.is_file() else "absent"
    def stamp(p):
        s = os.stat(Path(root, p))
        return f"size {s.st_size} mtime {s.st_mtime_ns}"
    return ([f"status {s}" for s in status] + [f"content {content(p)} {p}" for p in sorted(set(changed))]
            + [f"ignored {stamp(p)} {p}" for p in sorted(ignored)])

def main(argv):
    if len(argv) < 2 or argv[0] not in ("save", "check"):
        sys.exit("usage: tree_state.py save|check FILE [PATH ...]")
    cmd, file, paths = argv[0], Path(argv[1]), argv[2:]
    now = tree_state(".", paths)
    if cmd == "save": file.write_text("".join(l + "\n" for l in now)); return
    if not file.exists(): sys.exit(f"tree_state.py: no record {file}; run `tree_state.py save {file}` first")
    before = file.read_text().splitlines()
    gone, new = [l for l in before if l not in now], [l for l in now if l not in before]
    if gone or new:
        print("The notebooks or tests changed the working tree (smoke runs must write under a temporary folder):")
        print("\n".join([*(f"- {l}" for l in gone), *(f"+ {l}" for l in new)]))
        sys.exit(1)

if __name__ == "__main__": main(sys.argv[1:])
