#!/usr/bin/env bash
# Stop the private dockerd that setup.sh started, by its pidfile. Its images stay in DIR/data
# (and in the cache folder), so the next setup.sh run is quick.
# Usage: tests/buildenv/stop.sh [DIR]      (default /tmp/pythonbuild-buildenv)
set -euo pipefail

STATE=$(realpath -m "${1:-/tmp/pythonbuild-buildenv}")
PIDFILE=$STATE/dockerd.pid

# dockerd leaves mounts behind (its exec-root's netns/default); without them DIR can be deleted.
unmount_leftovers() {
  awk -v root="$STATE/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r mnt; do umount -l "$mnt" || true; done
}

# "dockerd" and not a zombie: a pid can be reused, and an exited daemon may linger unreaped.
alive() {
  local proc
  proc=$(awk '{ print $2, $3 }' "/proc/$1/stat" 2>/dev/null || true)
  [[ $proc == "(dockerd) "[^Z]* ]]
}

pid=$(cat "$PIDFILE" 2>/dev/null || true)
if ! alive "${pid:-0}"; then
  rm -f "$PIDFILE" "$STATE/env"
  unmount_leftovers
  echo "buildenv: no dockerd running for $STATE"
  exit 0
fi

# TERM lets dockerd stop its containers and its managed containerd.
kill -TERM "$pid"
for _ in $(seq 60); do
  if ! alive "$pid"; then break; fi
  sleep 0.5
done
if alive "$pid"; then
  echo "buildenv: dockerd $pid ignored TERM for 30s; killing it" >&2
  kill -KILL "$pid"
  sleep 1
fi
rm -f "$PIDFILE" "$STATE/env"
unmount_leftovers
echo "buildenv: stopped dockerd $pid ($STATE)"
