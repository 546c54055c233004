#!/usr/bin/env bash
# Packs sglang-router and vllm-router for scripts/gpu_peer_routers.sh into .peer-whl/ (ignored):
# their wheels unpacked into one xz tarball (35 MB against the wheels' 54, so that the tree sent to
# the GPU machine, the project's wheels in .whl/ included, stays under its 64 MiB), and the two
# small wheels they import there (orjson, setproctitle). The GPU machine runs Python 3.12 on x86-64.
set -euo pipefail
dest=.peer-whl
work=$(mktemp -d)
fetch() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$@"
}
fetch "$work" sglang-router==0.3.2 vllm-router==0.1.17
rm -rf "$dest" && mkdir -p "$dest" "$work/tree"
fetch "$dest" orjson setproctitle
for w in "$work"/*.whl; do unzip -q -o "$w" -d "$work/tree"; done
tar -C "$work/tree" -cf - . | xz -9 -T0 > "$dest/peer-routers.tar.xz"
rm -rf "$work"
ls -l "$dest"
