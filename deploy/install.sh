#!/usr/bin/env bash
# Install this edgevision deploy folder on the device it was made for (written by `edgevision deploy`).
#
# Each install is a new release beside the old ones: PREFIX/releases/ID holds its own venv and bundle,
# and PREFIX/current moves to it only after `edgevision verify` has reproduced the export machine's
# answers there. A failed install or verify removes the new release and leaves the running one as it was.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
. "$HERE/deploy.env"

PREFIX="$HOME/edgevision"
SERVICE=auto
# Where systemd lives; overridable so the service steps can be tested without a running systemd.
SYSTEMD_RUN="${EDGEVISION_SYSTEMD_RUN:-/run/systemd/system}"
UNIT_DIR="${EDGEVISION_UNIT_DIR:-/etc/systemd/system}"
SYSTEMCTL="${EDGEVISION_SYSTEMCTL:-systemctl}"
APT=yes
INDEX_URL=""
KEEP=3

usage() {
  cat <<EOF
usage: install.sh [--prefix DIR] [--service auto|yes|no] [--no-apt] [--pip-index-url URL] [--keep N]

Installs the edgevision runtime and this bundle for profile $PROFILE into DIR (default ~/edgevision),
verifies it, and (with --service yes, or auto where systemd runs and root or passwordless sudo is at
hand) installs and restarts the systemd service $SERVICE_NAME.
  --no-apt             do not install the apt packages the profile lists ($APT_PACKAGES)
  --pip-index-url URL  an extra package index for pip (e.g. a local mirror)
  --keep N             releases to keep, the current one included (default 3)
EOF
}

say() { echo "install: $*"; }
fail() { echo "install: error: $1" >&2; exit "${2:-4}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a folder}"; shift 2 ;;
    --service) SERVICE="${2:?--service needs auto, yes or no}"; shift 2 ;;
    --no-apt) APT=no; shift ;;
    --pip-index-url) INDEX_URL="${2:?--pip-index-url needs a URL}"; shift 2 ;;
    --keep) KEEP="${2:?--keep needs a number}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$SERVICE" in auto|yes|no) ;; *) fail "--service must be auto, yes or no, got '$SERVICE'" 2 ;; esac
[[ "$KEEP" =~ ^[1-9][0-9]*$ ]] || fail "--keep must be a positive number, got '$KEEP'" 2
case "$PREFIX" in "~") PREFIX="$HOME" ;; "~/"*) PREFIX="$HOME/${PREFIX#"~/"}" ;; esac
# The unit file names PREFIX unquoted: keep it to characters systemd and sed take as they are.
case "$PREFIX" in
  /*) ;;
  *) fail "--prefix must be an absolute folder (or start with ~/), got '$PREFIX'" 2 ;;
esac
case "$PREFIX" in *[!A-Za-z0-9._/+-]*) fail "--prefix '$PREFIX' may hold only letters, digits and . _ / + -" 2 ;; esac

# Root for apt and systemd: root itself, or sudo that never asks for a password (nobody is there to type it).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 99
  fi
}

# 1. The device: architecture and a Python 3.10+ (a 32-bit Python on a 64-bit kernel counts as 32-bit:
# the wheels are for the Python, not the kernel).
MACHINE="$(uname -m)"
[ "$MACHINE" = "$TARGET_MACHINE" ] || fail "this device is $MACHINE; this deploy folder was made for $TARGET_MACHINE (profile $PROFILE)" 3
PYTHON="$(command -v python3 || true)"
[ -n "$PYTHON" ] || fail "this device has no python3; edgevision needs Python 3.10 or newer" 3
BITS="$("$PYTHON" -c 'import struct; print(struct.calcsize("P") * 8)')"
[ "$BITS" = 64 ] || fail "this device's python3 is a ${BITS}-bit build on a $MACHINE kernel; the runtime's wheels need a 64-bit Python (64-bit Raspberry Pi OS)" 3
PYV="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || fail "this device has Python $PYV; edgevision needs Python 3.10 or newer" 3
REQUIREMENTS="$HERE/requirements-py$PYV.txt"
[ -f "$REQUIREMENTS" ] || fail "no pinned runtime requirements for Python $PYV on profile $PROFILE (this folder has: $(cd "$HERE" && ls requirements-py*.txt | tr '\n' ' '))" 3
if [ -d "$HERE/wheels" ] && [ "$PYV" != "$TARGET_PYTHON" ]; then
  fail "the wheelhouse was downloaded for Python $TARGET_PYTHON, this device has $PYV: run edgevision deploy again with --python-version $PYV" 3
fi

# 2. System packages.
missing=""
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if [ "$APT" = no ]; then
    say "not installing apt packages (--no-apt):$missing"
  else
    say "apt install$missing"
    rc=0; as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || rc=$?
    [ "$rc" = 0 ] && { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null || rc=$?; }
    [ "$rc" = 99 ] && fail "installing$missing needs root: log in as a user with passwordless sudo, or run 'sudo apt install$missing' once" 4
    [ "$rc" = 0 ] || fail "apt-get install$missing failed (exit $rc)" 4
  fi
fi

# 3. A new release: its own venv and bundle. One install at a time per PREFIX (two deploys reaching the
# same device under two names must not switch `current` under each other).
mkdir -p "$PREFIX/releases"
PREFIX="$(cd "$PREFIX" && pwd)"
if command -v flock >/dev/null; then
  exec 9> "$PREFIX/.install.lock"
  flock -w 1800 9 || fail "another install into $PREFIX is still running" 4
fi
RELEASE="$(date +%Y%m%d-%H%M%S)-$$"
REL="$PREFIX/releases/$RELEASE"
cleanup() { rm -rf "$REL"; }
trap 'cleanup' EXIT
say "release $RELEASE in $PREFIX (profile $PROFILE, Python $PYV, $MACHINE)"
VENV_FLAGS=""
[ "$SYSTEM_SITE_PACKAGES" = 1 ] && VENV_FLAGS="--system-site-packages"
"$PYTHON" -m venv $VENV_FLAGS "$REL/venv" || fail "python3 -m venv failed (on Debian: apt install python3-venv)" 4
PIP=("$REL/venv/bin/python" -m pip -q --disable-pip-version-check install --only-binary=:all:)
if [ -d "$HERE/wheels" ]; then
  PIP+=(--no-index --find-links "$HERE/wheels")
elif [ -n "$INDEX_URL" ]; then
  PIP+=(--extra-index-url "$INDEX_URL")
fi
"${PIP[@]}" -r "$REQUIREMENTS" || fail "installing the runtime requirements failed" 4
"${PIP[@]}" --no-deps --no-index "$HERE"/edgevision-*.whl || fail "installing edgevision failed" 4
cp -R "$HERE/bundle" "$REL/bundle"
cp "$HERE/deploy.json" "$REL/deploy.json"
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@USER@|$(id -un)|g" "$HERE/$SERVICE_NAME.service" > "$REL/$SERVICE_NAME.service"

# 4. The proof: this device's engines reproduce the export machine's answers.
say "verifying the bundle on this device"
"$REL/venv/bin/edgevision" verify "$REL/bundle" --artifact all --profile "$PROFILE" \
  || fail "verify failed: this device does not reproduce the export machine's answers; the previous release stays current" 5

# 5. The service file, before anything switches (a missing sudo must not leave a half-done deploy).
WANT_SERVICE=no
if [ "$SERVICE" != no ]; then
  if [ -d "$SYSTEMD_RUN" ] && as_root true; then
    WANT_SERVICE=yes
  elif [ "$SERVICE" = yes ]; then
    [ -d "$SYSTEMD_RUN" ] || fail "--service yes but systemd is not running on this device" 6
    fail "--service yes needs root or passwordless sudo to install $SERVICE_NAME.service" 6
  fi
fi
if [ "$WANT_SERVICE" = yes ]; then
  as_root install -m 644 "$REL/$SERVICE_NAME.service" "$UNIT_DIR/$SERVICE_NAME.service" \
    || fail "could not write $UNIT_DIR/$SERVICE_NAME.service" 6
  as_root "$SYSTEMCTL" daemon-reload
  as_root "$SYSTEMCTL" enable "$SERVICE_NAME.service" >/dev/null 2>&1 || fail "systemctl enable $SERVICE_NAME failed" 6
fi

# 6. Switch: one rename, so `current` is always a whole release.
PREVIOUS="$(readlink "$PREFIX/current" 2>/dev/null || true)"
switch_to() {
  ln -sfn "$1" "$PREFIX/current.new.$RELEASE"
  mv -Tf "$PREFIX/current.new.$RELEASE" "$PREFIX/current"
}
switch_to "releases/$RELEASE"
say "current -> releases/$RELEASE"
if [ "$WANT_SERVICE" = yes ]; then
  state=failed
  if as_root "$SYSTEMCTL" restart "$SERVICE_NAME.service"; then
    sleep 3
    state="$("$SYSTEMCTL" is-active "$SERVICE_NAME.service" || true)"
  fi
  if [ "$state" != active ]; then
    # The new release verified but does not run as a service (often the camera): put the previous one back.
    if [ -n "$PREVIOUS" ] && [ -d "$PREFIX/$PREVIOUS" ]; then
      switch_to "$PREVIOUS"
      as_root install -m 644 "$PREFIX/$PREVIOUS/$SERVICE_NAME.service" "$UNIT_DIR/$SERVICE_NAME.service" || true
      as_root "$SYSTEMCTL" daemon-reload || true
      as_root "$SYSTEMCTL" restart "$SERVICE_NAME.service" || true
      fail "$SERVICE_NAME.service was $state with the new release (journalctl -u $SERVICE_NAME); back on $PREVIOUS" 6
    fi
    # The first install: nothing to go back to, so nothing stays installed or enabled.
    as_root "$SYSTEMCTL" disable --now "$SERVICE_NAME.service" >/dev/null 2>&1 || true
    rm -f "$PREFIX/current"
    fail "$SERVICE_NAME.service is $state after the restart: journalctl -u $SERVICE_NAME" 6
  fi
  trap - EXIT
  say "service $SERVICE_NAME: active"
else
  trap - EXIT
  say "service: not installed (--service $SERVICE); unit file at $PREFIX/current/$SERVICE_NAME.service"
fi

# 7. Old releases beyond --keep go; the current one always stays.
ls -1d "$PREFIX"/releases/*/ 2>/dev/null | sort | head -n "-$KEEP" | while read -r old; do
  [ "$(cd "$old" && pwd)" = "$REL" ] || rm -rf "$old"
done
say "done"
