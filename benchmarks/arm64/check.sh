#!/usr/bin/env bash
# Verify a bundle on 64-bit Arm without an Arm board: `edgevision deploy --wheels` for a Raspberry Pi
# profile, then its install.sh and `edgevision verify` run with the Python 3.11 of an arm64 Debian
# Bookworm userland (Raspberry Pi OS's base) under qemu-user emulation, with the runtime installed from
# the aarch64 wheels of its dependencies. Prints each artifact's answers on x86-64 and on arm64 against
# the golden ones the bundle carries, and how long each step took.
#
# Emulated times are not device times: qemu runs Arm code several times slower than the board would.
#
#   sudo bash benchmarks/arm64/check.sh BUNDLE [PROFILE]       (PROFILE default raspberry-pi-5)
#
# Needs root (chroot, binfmt_misc), qemu-user-static and debootstrap (apt), network to Debian's mirror
# once (the userland is cached in $EDGEVISION_ARM64_ROOTFS, default /var/cache/edgevision/arm64-bookworm)
# and to PyPI for the wheels. EDGEVISION names the x86-64 `edgevision` command (default: on PATH).
set -euo pipefail

BUNDLE="${1:?usage: check.sh BUNDLE [PROFILE]}"
PROFILE="${2:-raspberry-pi-5}"
ROOTFS="${EDGEVISION_ARM64_ROOTFS:-/var/cache/edgevision/arm64-bookworm}"
EDGEVISION="${EDGEVISION:-edgevision}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

fail() { echo "check.sh: $*" >&2; exit 1; }
now() { date +%s.%N; }
declare -A SECONDS_OF
timed() {  # timed STEP command...: run it and remember how long it took
  local step="$1" start rc=0; shift
  start="$(now)"
  "$@" || rc=$?
  SECONDS_OF[$step]="$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')"
  return "$rc"
}

[ "$(id -u)" = 0 ] || fail "needs root (chroot and binfmt_misc)"
[ -d "$BUNDLE" ] || fail "no bundle folder '$BUNDLE'"
command -v debootstrap >/dev/null || fail "needs debootstrap (apt install debootstrap)"
QEMU=/usr/libexec/qemu-binfmt/aarch64-binfmt-P
[ -x "$QEMU" ] || QEMU="$(command -v qemu-aarch64-static || true)"
[ -n "$QEMU" ] || fail "needs qemu-user-static (apt install qemu-user-static)"

# Arm executables run through qemu: register the interpreter with the kernel if it is not yet.
if [ "$(uname -m)" != aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || fail "cannot mount binfmt_misc"
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register || fail "cannot register qemu-aarch64"
  fi
fi

# 1. The arm64 userland, built once.
if [ ! -f "$ROOTFS/.edgevision-complete" ]; then
  rm -rf "$ROOTFS.partial"
  mkdir -p "$(dirname "$ROOTFS")"
  timed userland debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv bookworm \
    "$ROOTFS.partial" "$MIRROR" >/dev/null
  rm -rf "$ROOTFS"
  mv "$ROOTFS.partial" "$ROOTFS"
  touch "$ROOTFS/.edgevision-complete"
else
  SECONDS_OF[userland]="cached"
fi
chroot "$ROOTFS" /usr/bin/uname -m | grep -qx aarch64 || fail "the userland in $ROOTFS does not run as aarch64"

WORK="$(mktemp -d)"
INSIDE="/root/edgevision-check"
cleanup() { rm -rf "$WORK" "$ROOTFS$INSIDE"; }
trap cleanup EXIT

# 2. The deploy folder, with aarch64 wheels for the profile's Python.
timed deploy "$EDGEVISION" deploy "$BUNDLE" --profile "$PROFILE" --wheels --out "$WORK/deploy" >/dev/null
rm -rf "$ROOTFS$INSIDE"
mkdir -p "$ROOTFS$INSIDE"
cp -R "$WORK/deploy" "$ROOTFS$INSIDE/deploy"

# 3. install.sh and verify on arm64. /proc and /sys stay unmounted: the host's would describe an x86 CPU
# to the engines' CPU detection (cpuinfo), which then picks kernels the emulated CPU lacks; without them
# cpuinfo complains on stderr (kept in the logs) and falls back to the baseline Arm kernels.
in_arm64() { chroot "$ROOTFS" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin "$@"; }
status=0
timed install in_arm64 bash "$INSIDE/deploy/install.sh" --prefix "$INSIDE/device" --no-apt --service no \
  > "$WORK/install.log" 2>&1 || status=$?
if [ "$status" != 0 ]; then
  cat "$WORK/install.log" >&2
  fail "install.sh on arm64 failed (exit $status)"
fi
timed verify in_arm64 "$INSIDE/device/current/venv/bin/edgevision" verify "$INSIDE/device/current/bundle" \
  --artifact all --profile "$PROFILE" --json > "$WORK/arm64.jsonl" 2> "$WORK/verify.log" || status=$?
[ "$status" = 0 ] || cat "$WORK/verify.log" >&2
"$EDGEVISION" verify "$WORK/deploy/bundle" --artifact all --profile none --json > "$WORK/x86.jsonl" || true
ARM_PYTHON="$(in_arm64 python3 -c 'import platform; print(platform.python_version(), platform.machine())')"

# 4. The comparison.
echo "arm64: Python $ARM_PYTHON (Debian Bookworm under $(basename "$QEMU"), emulated); x86-64: $(uname -m)"
echo "profile $PROFILE; answers compared with the golden ones computed at export"
echo
python3 - "$WORK/x86.jsonl" "$WORK/arm64.jsonl" <<'EOF'
import json, sys
rows = [{r["artifact"]: r for r in map(json.loads, open(path))} for path in sys.argv[1:]]
def cell(r):
    if r is None:
        return "not run"
    if r["error"]:
        return "error: " + r["error"]
    return (f"{r['labels_equal']}/{r['images']} equal, max diff {r['max_prob_diff']:.1e}, "
            f"{r['within']}/{r['images']} within {r['tolerance']['prob_diff']:g} -> {'pass' if r['passed'] else 'FAIL'}")
print("| artifact | precision | x86-64 | arm64 (emulated) |")
print("|---|---|---|---|")
for name, r in rows[1].items():
    print(f"| {name} | {r['precision']} | {cell(rows[0].get(name))} | {cell(r)} |")
EOF
echo
echo "seconds: userland ${SECONDS_OF[userland]}, deploy --wheels ${SECONDS_OF[deploy]}, install.sh on arm64 ${SECONDS_OF[install]} (venv, wheels, verify), verify again ${SECONDS_OF[verify]} (emulated: not device times)"
[ "$status" = 0 ] || fail "verify on arm64 failed"
echo "arm64: every artifact reproduces the export machine's answers"
