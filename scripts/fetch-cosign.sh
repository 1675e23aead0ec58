#!/bin/sh
# Fetch cosign (Debian trixie's package: a static-enough Go binary needing glibc >= 2.34) into
# DESTDIR without changing the system's apt configuration: apt runs with a private sources list,
# state and cache under DESTDIR, downloads the .deb and unpacks it with dpkg -x.
# usage: scripts/fetch-cosign.sh DESTDIR    -> DESTDIR/usr/bin/cosign
set -eu
[ $# -eq 1 ] || { echo "usage: $0 DESTDIR" >&2; exit 2; }
dest=$(realpath -m "$1")
apt_dir="$dest/apt"
mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$dest/download"
cat > "$apt_dir/sources/trixie.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
set -- -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources" \
       -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" \
       -o Dir::State::status=/dev/null
apt-get "$@" -q update >/dev/null
# apt drops privileges to _apt for downloads; let it write into the download dir.
chmod 777 "$dest/download"
(cd "$dest/download" && rm -f cosign_*.deb && apt-get "$@" -q download cosign >/dev/null)
dpkg -x "$dest"/download/cosign_*.deb "$dest"
"$dest/usr/bin/cosign" version >/dev/null 2>&1 || { echo "cosign does not run here" >&2; exit 1; }
echo "$dest/usr/bin/cosign"
