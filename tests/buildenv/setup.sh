#!/usr/bin/env bash
# Prepare what the `realbuild` tests need for real cibuildwheel builds on a machine with no
# container engine running and no container registry reachable (only Debian's mirror and PyPI):
#
#   1. the Debian packages docker.io, debootstrap, qemu-user-static, binfmt-support, zstd;
#   2. a private dockerd, all of its state under DIR (default /tmp/pythonbuild-buildenv);
#   3. qemu-aarch64 registered in binfmt_misc with the F flag, so it works inside containers;
#   4. two images, linux/amd64 and linux/arm64, from a debootstrapped bookworm plus ./Dockerfile,
#      loaded from a cache folder when one was saved before, else built and saved there;
#   5. DIR/env, which tests/buildenv.py reads.
#
# Usage: tests/buildenv/setup.sh [DIR]      (run as root; idempotent; stop with ./stop.sh DIR)
#   PYTHONBUILD_CI_CACHE=PATH   the image cache (default /var/cache/pythonbuild-ci)
#   PYTHONBUILD_SKIP_AARCH64=1  no aarch64 image (local developer runs only; DIR/env says so)
#   PYTHONBUILD_DEBIAN_MIRROR   (default http://deb.debian.org/debian)
#
# One line per step, with its time. On failure: one line naming the step and why, the same line
# in DIR/error (the realbuild tests then fail with it), and a non-zero exit.
set -Eeuo pipefail

# Bash reads a script while running it; these braces (closed at the end) make it read all of it
# first, so a checkout updated mid-run cannot garble the run.
{

# Bump to rebuild every cached image.
SCRIPT_VERSION=2
SUITE=bookworm

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=$(realpath -m "${1:-/tmp/pythonbuild-buildenv}")
CACHE=$(realpath -m "${PYTHONBUILD_CI_CACHE:-/var/cache/pythonbuild-ci}")
MIRROR=${PYTHONBUILD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SKIP_AARCH64=${PYTHONBUILD_SKIP_AARCH64:-0}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
SOCK=$STATE/docker.sock
PIDFILE=$STATE/dockerd.pid
WORK=$STATE/work
export DOCKER_HOST=unix://$SOCK
# The legacy builder: no buildx plugin here, and it honours --platform for FROM scratch.
export DOCKER_BUILDKIT=0

T0=$SECONDS
STEP=start
STEP_T0=$SECONDS
LOG=/dev/null

mkdir -p "$STATE/logs" "$WORK" || {
  echo "buildenv: step 'start' failed: cannot create $STATE" >&2
  exit 1
}

begin() {
  STEP=$1
  STEP_T0=$SECONDS
  LOG=$STATE/logs/${1//[^A-Za-z0-9_.-]/_}.log
  : >"$LOG"
}

finish() {
  printf '[buildenv %4ds] %s: %s (%ds)\n' $((SECONDS - T0)) "$STEP" "$1" $((SECONDS - STEP_T0))
}

last_line() {
  grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-300 || true
}

fail() {
  trap - ERR
  local line="buildenv: step '$STEP' failed after $((SECONDS - STEP_T0))s: $*"
  # The first failure is the cause: a subshell's ($(...)) fail comes before its parent's.
  if [[ ! -s $STATE/error ]]; then
    printf '%s\n' "$line" >&2
    printf '%s\n' "$line" >"$STATE/error" || true
  fi
  exit 1
}

on_error() {
  local rc=$? cmd=$BASH_COMMAND why
  why="\`$cmd\` exited $rc"
  if [[ -s $LOG ]]; then
    why+=": $(last_line "$LOG") (log: $LOG)"
  fi
  fail "$why"
}
trap on_error ERR

# One run at a time per DIR. The lock's descriptor is closed for dockerd (9>&- below), which
# outlives this script.
exec 9>"$STATE/lock"
flock 9
rm -f "$STATE/error" "$STATE/env"

# A debootstrap that died may leave /proc or /sys mounted inside its root; never rm through them.
remove_tree() {
  local mnt
  if [[ -e $1 ]]; then
    awk -v root="$1/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r \
      | while read -r mnt; do umount -l "$mnt"; done
    rm -rf --one-file-system "$1"
  fi
}

image_platform() {
  docker image inspect "$1" --format '{{.Os}}/{{.Architecture}}' 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
begin packages
[[ $EUID -eq 0 ]] || fail "must run as root (apt-get, dockerd, debootstrap, binfmt_misc)"
[[ $(uname -m) == x86_64 ]] || fail "x86_64 hosts only (aarch64 is emulated), not $(uname -m)"
[[ -s $CA_BUNDLE ]] || fail "no CA bundle at $CA_BUNDLE"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v zstd >/dev/null || missing+=(zstd)
command -v systemd-analyze >/dev/null || missing+=(systemd)  # tests/test_systemd.py
if [[ $SKIP_AARCH64 != 1 ]]; then
  [[ -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
fi
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  apt-get update >"$LOG" 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$LOG" 2>&1
  finish "installed ${missing[*]}"
else
  finish "all present"
fi

# ---------------------------------------------------------------------------------------------
begin dockerd
# "dockerd" and not a zombie: a pid can be reused, and an exited daemon may linger unreaped.
alive() {
  local proc
  proc=$(awk '{ print $2, $3 }' "/proc/$1/stat" 2>/dev/null || true)
  [[ $proc == "(dockerd) "[^Z]* ]]
}
pid=$(cat "$PIDFILE" 2>/dev/null || true)
if alive "${pid:-0}"; then
  how="already running"
else
  rm -f "$PIDFILE" "$SOCK"
  # setsid: its own session, so it outlives this script and whatever group ran it.
  setsid dockerd \
    --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$PIDFILE" \
    -H "unix://$SOCK" --bridge=none --iptables=false --ip-forward=false \
    </dev/null >"$STATE/dockerd.log" 2>&1 9>&- &
  child=$!
  how="started"
fi
for _ in $(seq 120); do
  if docker version >/dev/null 2>&1; then break; fi
  if [[ $how == started ]]; then
    # Gone or a zombie? (Not `alive`: it may still be named bash or setsid just after the fork.)
    state=$(awk '{ print $3 }' "/proc/$child/stat" 2>/dev/null || true)
    if [[ $state == "" || $state == Z ]]; then
      fail "dockerd exited: $(last_line "$STATE/dockerd.log") (log: $STATE/dockerd.log)"
    fi
  fi
  sleep 0.5
done
docker version >"$LOG" 2>&1 \
  || fail "dockerd not answering on $SOCK after 60s: $(last_line "$STATE/dockerd.log")"
pid=$(cat "$PIDFILE")
server=$(docker version --format '{{.Server.Version}}')
driver=$(docker info --format '{{.Driver}}')
finish "$how, pid $pid, server $server, storage $driver, $DOCKER_HOST"

# ---------------------------------------------------------------------------------------------
ARCHS=(x86_64)
if [[ $SKIP_AARCH64 != 1 ]]; then
  ARCHS+=(aarch64)
  begin binfmt
  BINFMT=/proc/sys/fs/binfmt_misc
  binfmt_ok() {
    grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null \
      && grep -q '^flags:.*F' "$BINFMT/qemu-aarch64"
  }
  if [[ ! -e $BINFMT/register ]]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT" >"$LOG" 2>&1
  fi
  if ! binfmt_ok; then
    update-binfmts --enable qemu-aarch64 >>"$LOG" 2>&1 || true
  fi
  if ! binfmt_ok; then
    # Register by hand: the interpreter is opened now (F, fix-binary), so it need not exist
    # inside the containers. Magic and mask as in Debian's /usr/share/binfmts/qemu-aarch64.
    if [[ -e $BINFMT/qemu-aarch64 ]]; then echo -1 >"$BINFMT/qemu-aarch64"; fi
    magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    echo ":qemu-aarch64:M::$magic:$mask:/usr/bin/qemu-aarch64-static:F" >"$BINFMT/register"
  fi
  if ! binfmt_ok; then
    fail "qemu-aarch64 not enabled with flag F: $(tr '\n' ' ' <"$BINFMT/qemu-aarch64" || true)"
  fi
  finish "qemu-aarch64 enabled, $(grep '^flags:' "$BINFMT/qemu-aarch64")"
fi

# ---------------------------------------------------------------------------------------------
# The key covers everything that goes into an image but the moving archives (Debian, PyPI):
# bump SCRIPT_VERSION to pick those up.
KEY=$( (
  echo "$SCRIPT_VERSION $SUITE"
  cat "$HERE/Dockerfile" "$CA_BUNDLE"
) | sha256sum | cut -c1-16)

declare -A PLATFORM=([x86_64]=linux/amd64 [aarch64]=linux/arm64)
declare -A DEBARCH=([x86_64]=amd64 [aarch64]=arm64)
declare -A IMAGE

build_image() {
  local arch=$1 image=$2 root=$WORK/rootfs-$1 ctx=$WORK/ctx-$1
  remove_tree "$root"
  remove_tree "$ctx"
  mkdir -p "$ctx"

  begin "debootstrap $arch"
  if [[ $arch == x86_64 ]]; then
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$LOG" 2>&1
  else
    debootstrap --arch="${DEBARCH[$arch]}" --foreign --variant=minbase \
      "$SUITE" "$root" "$MIRROR" >"$LOG" 2>&1
    cp /usr/bin/qemu-aarch64-static "$root/usr/bin/"
    chroot "$root" /debootstrap/debootstrap --second-stage >>"$LOG" 2>&1
  fi
  # The Dockerfile runs apt-get update itself; these would only weigh on every layer above.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
    "$root"/var/lib/apt/lists/*
  # Devices, /proc and /sys come from the container runtime.
  tar -C "$root" --numeric-owner '--exclude=./dev/*' '--exclude=./proc/*' '--exclude=./sys/*' \
    -cf "$ctx/rootfs.tar" . >>"$LOG" 2>&1
  remove_tree "$root"
  finish "$(du -m "$ctx/rootfs.tar" | cut -f1) MB rootfs"

  # `docker import --platform` is ignored by this docker; a build FROM scratch is not.
  begin "base image $arch"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' >"$ctx/Dockerfile"
  docker build --platform "${PLATFORM[$arch]}" -t "pythonbuild-buildenv-base-$arch:$KEY" \
    "$ctx" >"$LOG" 2>&1
  remove_tree "$ctx"
  finish "pythonbuild-buildenv-base-$arch:$KEY"

  begin "image $arch"
  mkdir -p "$ctx"
  cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
  docker build --network=host --platform "${PLATFORM[$arch]}" \
    --build-arg "BASE=pythonbuild-buildenv-base-$arch:$KEY" \
    -f "$HERE/Dockerfile" -t "$image" "$ctx" >"$LOG" 2>&1
  remove_tree "$ctx"
  docker image rm "pythonbuild-buildenv-base-$arch:$KEY" >>"$LOG" 2>&1
  finish "$image"
}

# cibuildwheel runs a local image without pulling only when `docker image inspect` reports
# exactly the platform it wants; and the image must run, emulated or not, as that machine.
# On failure: WHY says why, and the status is 1.
check_image() {
  local arch=$1 image=$2 want=${PLATFORM[$1]} got machine
  got=$(image_platform "$image")
  if [[ $got != "$want" ]]; then
    WHY="$image is '$got', cibuildwheel wants '$want'"
    return 1
  fi
  if ! docker run --rm --network=host --platform "$want" "$image" sh -c \
    'uname -m; /opt/python/cp311-cp311/bin/python -V; /opt/python/cp39-cp39/bin/python -V;
     auditwheel --version; patchelf --version' >"$LOG" 2>&1; then
    WHY="a container of $image failed: $(last_line "$LOG")"
    return 1
  fi
  machine=$(head -n 1 "$LOG")
  if [[ $machine != "$arch" ]]; then
    WHY="a container of $image runs as '$machine', not $arch"
    return 1
  fi
  CHECKED="$want, runs as $machine, $(sed -n 2p "$LOG")"
}

# cibuildwheel's test step first runs `pip install virtualenv -c <its constraints>` in the build
# Python. With that pinned virtualenv already there, the step needs no index, so a build in the
# tests reaches nothing but the proxy under test. The pins change with cibuildwheel's version,
# hence a thin layer of their own on top of the cached image, rebuilt in seconds.
begin "cibuildwheel pins"
PYTHON=${PYTHONBUILD_PYTHON:-$HERE/../../.venv/bin/python}
CIBW_CONSTRAINTS=$("$PYTHON" -c 'import cibuildwheel, pathlib
print(pathlib.Path(cibuildwheel.__file__).parent / "resources" / "constraints-python311.txt")' \
  2>>"$LOG") || fail "cibuildwheel is not installed for $PYTHON (pip install -e '.[test]' first)"
[[ -s $CIBW_CONSTRAINTS ]] || fail "no $CIBW_CONSTRAINTS"
finish "$CIBW_CONSTRAINTS"

pin_layer() {
  local arch=$1 base=$2 ctx=$WORK/ctx-pins-$1 key
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$CIBW_CONSTRAINTS" "$ctx/constraints.txt"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
ARG BASE
FROM ${BASE}
COPY constraints.txt /etc/pythonbuild/cibuildwheel-constraints.txt
RUN /opt/python/cp311-cp311/bin/pip install --no-cache-dir \
      -c /etc/pythonbuild/cibuildwheel-constraints.txt virtualenv
DOCKERFILE
  key=$(cat "$ctx/Dockerfile" "$ctx/constraints.txt" | sha256sum | cut -c1-16)
  LAYER=pythonbuild-buildenv-pins-$arch:$KEY-$key
  if [[ -z $(image_platform "$LAYER") ]]; then
    docker build --network=host --platform "${PLATFORM[$arch]}" --build-arg "BASE=$base" \
      -t "$LAYER" "$ctx" >>"$LOG" 2>&1 || fail "$(last_line "$LOG")"
  fi
  docker image ls "pythonbuild-buildenv-pins-$arch" --format '{{.Repository}}:{{.Tag}}' \
    | { grep -vxF "$LAYER" || true; } | xargs -r docker image rm >/dev/null
}

for arch in "${ARCHS[@]}"; do
  image=pythonbuild-buildenv-$arch:$KEY
  cached=$CACHE/pythonbuild-buildenv-$arch-$KEY.tar.zst

  begin "load $arch"
  if [[ -n $(image_platform "$image") ]]; then
    found="already in this dockerd"
  elif [[ -s $cached ]] && zstd -dc "$cached" 2>>"$LOG" | docker load >>"$LOG" 2>&1; then
    found="loaded from $cached ($(du -m "$cached" | cut -f1) MB)"
  else
    found=""
    if [[ -e $cached ]]; then
      echo "[buildenv] cache $cached unusable ($(last_line "$LOG")); rebuilding" >&2
      rm -f "$cached"
    fi
    finish "not cached, building"
  fi
  if [[ -n $found ]]; then
    finish "$image $found"
    begin "check $arch"
    if check_image "$arch" "$image"; then
      finish "$CHECKED"
    else
      # Safe over quick: anything wrong with a kept image means building it again.
      echo "[buildenv] $image ($found) unusable: $WHY; rebuilding" >&2
      docker image rm -f "$image" >>"$LOG" 2>&1 || true
      rm -f "$cached"
      found=""
      finish "unusable, rebuilding"
    fi
  fi
  if [[ -z $found ]]; then
    build_image "$arch" "$image"
    begin "check $arch"
    check_image "$arch" "$image" || fail "$WHY"
    finish "$CHECKED"
  fi

  if [[ ! -s $cached ]]; then
    begin "save $arch"
    mkdir -p "$CACHE"
    docker save "$image" | zstd -q -T0 -o "$cached.partial.$$" 2>"$LOG"
    mv -f "$cached.partial.$$" "$cached"
    # Keep one image per architecture, the one this key names, and no partial a killed run left.
    find "$CACHE" -maxdepth 1 -name "pythonbuild-buildenv-$arch-*.tar.zst" \
      ! -name "$(basename "$cached")" -delete
    find "$CACHE" -maxdepth 1 -name "pythonbuild-buildenv-$arch-*.partial.*" -mmin +120 -delete
    finish "$cached ($(du -m "$cached" | cut -f1) MB)"
  fi
  # Older keys' images in this dockerd.
  docker image ls "pythonbuild-buildenv-$arch" --format '{{.Repository}}:{{.Tag}}' \
    | { grep -vxF "$image" || true; } | xargs -r docker image rm >/dev/null
  begin "pins $arch"
  pin_layer "$arch" "$image"
  finish "$LAYER"
  IMAGE[$arch]=$LAYER
done

# ---------------------------------------------------------------------------------------------
begin env
{
  echo "DOCKER_HOST=$DOCKER_HOST"
  echo "PYTHONBUILD_TEST_IMAGE_X86_64=${IMAGE[x86_64]}"
  echo "PYTHONBUILD_TEST_IMAGE_AARCH64=${IMAGE[aarch64]:-}"
  if [[ $SKIP_AARCH64 == 1 ]]; then echo "PYTHONBUILD_SKIP_AARCH64=1"; fi
  echo "PYTHONBUILD_BUILDENV=$STATE"
} >"$STATE/env.partial"
mv -f "$STATE/env.partial" "$STATE/env"
finish "$STATE/env, total $((SECONDS - T0))s"
exit 0
}
