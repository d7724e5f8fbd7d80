#!/usr/bin/env bash
# Install Fashion-MNIST (Debian's dataset-fashion-mnist: IDX files in /usr/share/datasets/fashion-mnist) where we can.
# Where we cannot, say so plainly; the tests that need it then fail in CI and skip with that reason elsewhere.
root=/usr/share/datasets/fashion-mnist
if [ -f "$root/train-images-idx3-ubyte.gz" ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's dataset-fashion-mnist ..."
  { apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; } >/tmp/selfguide-apt.log 2>&1 \
    || { echo "WARNING: apt-get could not install dataset-fashion-mnist (log: /tmp/selfguide-apt.log)"; exit 0; }
else
  echo "WARNING: Fashion-MNIST is not installed in $root and this is not a root Debian shell:"
  echo "         run 'sudo apt-get install dataset-fashion-mnist' or pass --data-root to your own copy of the IDX files."
fi
