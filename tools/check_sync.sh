#!/usr/bin/env bash
# Notebooks are the source of truth: cleaning them and exporting them must change nothing.
# Compares a fingerprint of nbs/ and selfguide/ (contents and untracked files) before and after.
set -euo pipefail
venv=${VENV:-.venv}
snapshot() { { git status --porcelain --untracked-files=all -- nbs selfguide; find nbs selfguide -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 md5sum; } ; }
before=$(snapshot)
"$venv/bin/nbdev-clean"
after_clean=$(snapshot)
if [ "$before" != "$after_clean" ]; then
  echo "nbdev-clean changed notebooks; run it and commit the result:"; diff <(echo "$before") <(echo "$after_clean") | grep '^[<>]' || true; exit 1
fi
"$venv/bin/nbdev-export"
after_export=$(snapshot)
if [ "$after_clean" != "$after_export" ]; then
  echo "nbdev-export changed selfguide/: the library is out of sync with nbs/; export and commit both:"
  diff <(echo "$after_clean") <(echo "$after_export") | grep '^[<>]' || true; exit 1
fi
echo "notebooks clean, library in sync with nbs/"
