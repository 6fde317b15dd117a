#!/usr/bin/env bash
# Build the sstensor Redis module (RedisAI tensor-storage stand-in) into build/sstensor.so.
#
# Idempotent: does nothing when build/sstensor.so is newer than its sources; safe to run from
# several processes at once (each compiles to a private file, then renames it into place).
# Needs only gcc (or $CC): the module API subset is declared in rm_min.h, no Redis headers.
#
# README section (for the project README, "SmartSim backend"):
#   SmartSim's Orchestrator always loads a RedisAI module ($RAI_PATH or
#   <site-packages>/smartsim/_core/lib/redisai.so); `smart build` needs the internet, so when no
#   RedisAI is installed the smartsim backend builds and loads this stand-in. It stores tensors
#   and model blobs with RedisAI-compatible replies (so the real SmartRedis client works) and
#   answers AI.MODELEXECUTE / AI.SCRIPT* / AI.DAG* / AI.INFO with
#   "ERR not available: the sstensor stand-in has no RedisAI runtime". Results record
#   backend_detail.redisai = "stand-in" (or "redisai" with a real module).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/build/sstensor.so"
cc="${CC:-gcc}"

if [[ -f "$out" && "$out" -nt "$here/sstensor.c" && "$out" -nt "$here/rm_min.h" && "$out" -nt "$here/build.sh" ]]; then
    echo "$out is up to date"
    exit 0
fi
command -v "$cc" >/dev/null || { echo "build.sh: $cc not found (apt-get install gcc)" >&2; exit 1; }
mkdir -p "$here/build"
tmp="$(mktemp "$here/build/.sstensor.XXXXXX.so")"
trap 'rm -f "$tmp"' EXIT
"$cc" -O2 -fPIC -shared -std=gnu11 -Wall -Wextra -Wno-unused-function -o "$tmp" "$here/sstensor.c"
chmod 755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "built $out"
