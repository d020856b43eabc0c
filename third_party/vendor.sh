#!/usr/bin/env bash
# Makes the pristine copy of a crates.io crate that third_party/ keeps: the published .crate
# (checksum checked against the crates.io index), library files only (Cargo.toml, build.rs,
# src/, README and licences), with the example, test and bench targets taken out of
# Cargo.toml (their files are not copied). A copy in third_party/ is this, then its patches.
#
#   third_party/vendor.sh CRATE VERSION OUTDIR
set -euo pipefail
crate=$1 version=$2 out=$3
cache=${MOIM_CRATES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moim/crates}
mkdir -p "$cache"
file=$cache/$crate-$version.crate
if [ ! -f "$file" ]; then
  curl -sfL -o "$file.part" "https://static.crates.io/crates/$crate/$crate-$version.crate"
  mv "$file.part" "$file"
fi
# The crate's file in the crates.io index: 1/NAME, 2/NAME, 3/N/NAME, else AB/CD/NAME.
lower=$(printf '%s' "$crate" | tr 'A-Z' 'a-z')
case ${#lower} in
  1 | 2) index=${#lower}/$lower ;;
  3) index=3/${lower:0:1}/$lower ;;
  *) index=${lower:0:2}/${lower:2:2}/$lower ;;
esac
want=$(curl -sf "https://index.crates.io/$index" |
  python3 -c 'import sys, json
for line in sys.stdin:
    v = json.loads(line)
    if v["vers"] == sys.argv[1]:
        print(v["cksum"])' "$version")
have=$(sha256sum "$file" | cut -d' ' -f1)
if [ -z "$want" ] || [ "$want" != "$have" ]; then
  rm -f "$file"
  echo "$crate $version: checksum ${have} is not the index's '${want}'" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar xzf "$file" -C "$tmp"
src=$tmp/$crate-$version
rm -rf "$out"
mkdir -p "$out"
for f in Cargo.toml build.rs README.md LICENSE LICENSE-APACHE LICENSE-MIT src; do
  [ -e "$src/$f" ] && cp -R "$src/$f" "$out/"
done
# Drop [[example]], [[test]] and [[bench]] tables (each runs to the next table header).
awk '
  /^\[\[(example|test|bench)\]\]/ { skip = 1; next }
  /^\[/ { skip = 0 }
  !skip { print }
' "$src/Cargo.toml" | cat -s > "$out/Cargo.toml"
