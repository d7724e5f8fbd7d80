#!/usr/bin/env bash
# Install Fashion-MNIST (Debian's dataset-fashion-mnist: IDX files in /usr/share/datasets/fashion-mnist) where we can.
# Where we cannot, say how to; in CI (CI=true) that is an error (exit 1), elsewhere a warning (exit 0): the tests that
# need the data then fail in CI and skip with the same instructions elsewhere.
# Usage: tools/ensure_fashion_mnist.sh [FOLDER]   (FOLDER: where to look, default Debian's; apt-get installs only there)
debian=/usr/share/datasets/fashion-mnist
root=${1:-$debian}
have() { [ -f "$root/train-images-idx3-ubyte.gz" ] || [ -f "$root/train-images-idx3-ubyte" ]; }
have && exit 0
note=""
if [ "$root" = "$debian" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's dataset-fashion-mnist ..."
  pkg=dataset-fashion-mnist
  { apt-get install -y -q $pkg || { apt-get update -q && apt-get install -y -q $pkg; }; } \
    >/tmp/selfguide-apt.log 2>&1 && have && exit 0
  note=" (apt-get could not install it here: /tmp/selfguide-apt.log)"
fi
how() {
  echo "$1: Fashion-MNIST is not installed in $root$note. Install it with"
  echo "    sudo apt-get install dataset-fashion-mnist    (Debian, Ubuntu)"
  echo "or put the four IDX files of github.com/zalandoresearch/fashion-mnist in $root."
}
case "${CI:-}" in
  ""|0|false|FALSE|False) how WARNING; echo "Its tests skip until then (with CI=true they fail)."; exit 0 ;;
  *) how ERROR >&2; echo "CI is set, where the Fashion-MNIST tests must run." >&2; exit 1 ;;
esac
