#!/usr/bin/env bash
# Builds LiveKit's server (github.com/livekit/livekit-server, main in cmd/server) from the Go
# module proxy, at the version pinned by tests/livekit/go.mod, into a cache outside the
# repository, for `moim-bench sfu --vs livekit` and its driver test. A warm cache whose pin has
# not changed is reused at once; otherwise Go's own build cache makes a rebuild incremental.
#
#   tests/livekit/build.sh      # builds if needed, prints the path of the binary
#
# MOIM_LIVEKIT_CACHE overrides the cache folder (default ~/.cache/moim/livekit). The benchmark
# finds the binary there (or at MOIM_LIVEKIT_BIN).
#
# The pin is v1.13.5: later releases replace pion's webrtc, dtls and ice with LiveKit's forks
# (github.com/livekit/webrtc-pion/v4 and others), which the module proxy does not serve.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MOIM_LIVEKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moim/livekit}
bin=$cache/livekit-server
mkdir -p "$cache"

stamp=$(cat "$here/build.sh" "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
if [ -f "$cache/.stamp" ] && [ "$(cat "$cache/.stamp")" = "$stamp" ] && [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "tests/livekit/build.sh needs Go (1.26 or newer)" >&2; exit 1; }
rm -f "$cache/.stamp"
start=$(date +%s)
version=$(awk '$1 == "github.com/livekit/livekit-server" { print $2 }' "$here/go.mod")
echo "building livekit-server $version into $cache" >&2
(cd "$here" && go build -trimpath -ldflags "-s -w" -o "$bin" github.com/livekit/livekit-server/cmd/server)
echo "$stamp" > "$cache/.stamp"
echo "livekit-server built in $(( $(date +%s) - start )) s" >&2
echo "$bin"
