#!/usr/bin/env bash
# Checks every copy in third_party/: it is exactly its crates.io version as vendor.sh makes it,
# plus its patches in order (patches/CRATE/NNNN-*.patch), and its own library tests pass.
# `.ci/run` runs it. Versions come from third_party/VERSIONS ("crate version" per line).
#
#   third_party/check.sh            # every crate
#   third_party/check.sh --no-test  # only the copies, not their tests
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run_tests=1
[ "${1:-}" = --no-test ] && run_tests=0
target=${MOIM_THIRD_PARTY_TARGET:-${XDG_CACHE_HOME:-$HOME/.cache}/moim/third-party-target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
while read -r crate version; do
  [ -z "$crate" ] || [ "${crate:0:1}" = "#" ] && continue
  "$here/vendor.sh" "$crate" "$version" "$work/$crate"
  for p in "$here/patches/$crate"/*.patch; do
    [ -e "$p" ] || continue
    if ! patch -s -p1 -d "$work/$crate" --no-backup-if-mismatch < "$p"; then
      echo "third_party/$crate: patches/$crate/$(basename "$p") does not apply to $crate $version" >&2
      status=1
      continue 2
    fi
  done
  if ! diff -ru "$work/$crate" "$here/$crate" > "$work/$crate.diff"; then
    echo "third_party/$crate is not $crate $version plus its patches:" >&2
    head -40 "$work/$crate.diff" >&2
    status=1
    continue
  fi
  echo "third_party/$crate: $crate $version plus $(ls "$here/patches/$crate" 2>/dev/null | wc -l) patch(es)"
  if [ $run_tests = 1 ]; then
    # On its own (not in moim's workspace), with the dependency versions it was published
    # with where the registry still has them.
    cp -R "$here/$crate" "$work/test-$crate"
    printf '\n[workspace]\n' >> "$work/test-$crate/Cargo.toml"
    if ! (cd "$work/test-$crate" && CARGO_TARGET_DIR=$target cargo test -q --lib 2>&1 | tail -5); then
      echo "third_party/$crate: its library tests fail" >&2
      status=1
    fi
  fi
done < "$here/VERSIONS"
exit $status
