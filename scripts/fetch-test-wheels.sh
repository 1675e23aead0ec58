#!/bin/sh
# Fetch the real wheels the `track-upstream --apply` test serves from its loopback PEP 503
# index (tests/release/test_track_upstream_apply.py): two releases of h11, a small
# pure-Python distribution with no dependencies. Each is pinned by the sha256 PyPI publishes
# (https://pypi.org/pypi/h11/json, recorded 2026-11-30), so a tampered or changed download
# fails here, not in the test. pip download honours the machine's pip configuration (proxy,
# certificates, local mirrors); the hash check makes the source irrelevant.
# usage: scripts/fetch-test-wheels.sh PYTHON DESTDIR   -> DESTDIR/h11-<version>-py3-none-any.whl
set -eu
[ $# -eq 2 ] || { echo "usage: $0 PYTHON DESTDIR" >&2; exit 2; }
python=$1
dest=$(realpath -m "$2")
mkdir -p "$dest"
fetch() { # name version sha256
    file="$dest/$1-$2-py3-none-any.whl"
    if [ -f "$file" ] && echo "$3  $file" | sha256sum -c --status; then return 0; fi
    req=$(mktemp)
    echo "$1==$2 --hash=sha256:$3" > "$req"
    "$python" -m pip --disable-pip-version-check download -q --no-deps --only-binary=:all: \
        --require-hashes -r "$req" -d "$dest"
    rm -f "$req"
    echo "$3  $file" | sha256sum -c --status || { echo "$file: sha256 mismatch" >&2; exit 1; }
}
fetch h11 0.15.0 ba64a7de94075657373ea90d9bd313a1429ba54868e702702ebeb089054f9812
fetch h11 0.16.0 63cf8bbe7522de3bf65932fda1d9c2772064ffb3dae62d55932da54b31cb6c86
