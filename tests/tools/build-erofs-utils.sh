#!/usr/bin/env bash
# build-erofs-utils.sh DEST_DIR
#
# Builds upstream erofs-utils 1.9.x (mkfs.erofs, fsck.erofs, dump.erofs) from the Debian
# source package (Debian unstable carries 1.9.x; bookworm only has 1.5) and caches the
# binaries in DEST_DIR/bin.  Nothing is installed on PATH and no erofs-utils package is
# installed or changed: the system's /usr/bin/mkfs.erofs stays as it is.
#
#   DEST_DIR/bin/{mkfs,fsck,dump}.erofs   the binaries (the only thing callers should use)
#   DEST_DIR/BUILD-INFO                   source version + configure flags
#   DEST_DIR/src/                         the downloaded .dsc/.orig.tar.gz/.debian.tar.xz
#   DEST_DIR/build.log                    full log of the last build
#
# Idempotent: exits 0 at once when DEST_DIR/bin/mkfs.erofs exists and reports 1.9.x.
# Otherwise (needs root, for apt):
#   1. adds a deb-src-only entry for Debian sid (no binary packages come from sid),
#   2. installs the missing build dependencies from the system's own suites (bookworm),
#   3. `apt-get source --download-only erofs-utils=<newest 1.9.x>`,
#   4. autogen + configure (compressors: lz4/lz4hc, lzma, deflate (built-in) + libdeflate,
#      zstd; zlib for gzip tar input; no fuse/oci/s3/selinux) + make -j${JOBS:-2},
#   5. copies the three binaries into DEST_DIR/bin (atomically, via a rename).
# On any failure: exits non-zero with one line `build-erofs-utils: FAILED: ...` on stderr
# (preceded by the tail of the log).
#
# Environment: JOBS (make -j, default 2), EROFS_UTILS_VERSION (exact Debian version to
# fetch instead of the newest 1.9.x, e.g. 1.9.4-1), DEBIAN_MIRROR (default: the mirror in
# the system's apt sources).
set -euo pipefail

ME=build-erofs-utils
STEP="start"
LOG=""

fail() {
	trap - ERR
	if [[ -n "$LOG" && -s "$LOG" ]]; then
		echo "----- last lines of $LOG -----" >&2
		tail -n 25 "$LOG" | sed 's/^/  | /' >&2
	fi
	echo "$ME: FAILED: $*${LOG:+ (full log: $LOG)}" >&2
	exit 1
}
trap 'fail "step \"$STEP\": command \`$BASH_COMMAND\` exited $? (line $LINENO)"' ERR

[[ $# -eq 1 && -n "$1" ]] || { echo "usage: $0 DEST_DIR" >&2; echo "$ME: FAILED: missing DEST_DIR argument" >&2; exit 2; }

mkdir -p -- "$1" || fail "cannot create DEST_DIR $1"
DEST=$(cd -- "$1" && pwd)
BIN="$DEST/bin"

# "mkfs.erofs (erofs-utils) 1.9.4" -> ok
is_19() { [[ -x "$1" ]] && "$1" --version 2>&1 | head -n1 | grep -Eq '(^|[^0-9.])1\.9(\.[0-9]+)?([^0-9.]|$)'; }
cached() { is_19 "$BIN/mkfs.erofs" && [[ -x "$BIN/fsck.erofs" && -x "$BIN/dump.erofs" ]]; }

if cached; then
	echo "$ME: cached: $("$BIN/mkfs.erofs" --version 2>&1 | head -n1) in $BIN"
	exit 0
fi

# One build at a time per DEST_DIR (tests may call this concurrently).
exec 9>"$DEST/.lock"
flock 9 || fail "cannot lock $DEST/.lock"
if cached; then
	echo "$ME: cached (built by a concurrent run): $BIN"
	exit 0
fi

LOG="$DEST/build.log"
: >"$LOG"
START=$(date +%s)
echo "$ME: building erofs-utils 1.9.x into $DEST (log: $LOG)"

[[ $(id -u) -eq 0 ]] || fail "must run as root (needs apt-get for build deps and the source package)"
command -v apt-get >/dev/null || fail "apt-get not found: this script needs a Debian system"
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- 1. sid deb-src entry
STEP="apt sources"
if [[ -z "${DEBIAN_MIRROR:-}" ]]; then
	DEBIAN_MIRROR=$(
		{ grep -hE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
		  grep -hE '^[[:space:]]*deb(-src)?[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
			sed -E 's/\[[^]]*\]//' | awk '{print $2}'; } |
		grep -E '^https?://[^ ]*/debian/?$' | head -n1 | sed 's:/*$::'
	) || true
	[[ -n "$DEBIAN_MIRROR" ]] || fail "no Debian mirror in the apt sources (set DEBIAN_MIRROR)"
fi
SID_SRC=/etc/apt/sources.list.d/erofs-forge-sid-src.sources
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -f "$KEYRING" ]] || fail "missing $KEYRING (install debian-archive-keyring)"
want_src="Types: deb-src
URIs: $DEBIAN_MIRROR
Suites: sid
Components: main
Signed-By: $KEYRING"
if [[ ! -f "$SID_SRC" ]] || [[ "$(cat "$SID_SRC")" != "$want_src" ]]; then
	printf '%s\n' "$want_src" >"$SID_SRC"
fi

STEP="apt-get update"
echo "$ME: apt-get update"
apt-get update >>"$LOG" 2>&1

# ---------------------------------------------------------------- 2. build deps
STEP="build dependencies"
DEPS=(dpkg-dev autoconf automake libtool pkg-config make gcc libc6-dev
	liblz4-dev libzstd-dev zlib1g-dev liblzma-dev libdeflate-dev libxxhash-dev uuid-dev)
missing=()
for p in "${DEPS[@]}"; do
	dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "$ME: installing build deps: ${missing[*]}"
	apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1 ||
		fail "apt-get install ${missing[*]} failed"
fi

# ---------------------------------------------------------------- 3. fetch source
STEP="pick source version"
if [[ -n "${EROFS_UTILS_VERSION:-}" ]]; then
	VER=$EROFS_UTILS_VERSION
else
	VER=$(apt-cache showsrc erofs-utils 2>>"$LOG" | awk '/^Version:/{print $2}' |
		grep -E '^([0-9]+:)?1\.9(\.|-|$)' | sort -V | tail -n1) || true
fi
[[ -n "$VER" ]] || fail "no erofs-utils 1.9.x source in apt (apt-cache showsrc erofs-utils lists: $(apt-cache showsrc erofs-utils 2>/dev/null | awk '/^Version:/{printf "%s ", $2}')); set EROFS_UTILS_VERSION"

STEP="apt-get source"
echo "$ME: fetching source erofs-utils $VER"
rm -rf "$DEST/src"
mkdir -p "$DEST/src"
# _apt cannot write into a root-owned dir: harmless warning, apt then downloads as root.
(cd "$DEST/src" && apt-get source --download-only "erofs-utils=$VER" >>"$LOG" 2>&1) ||
	fail "apt-get source --download-only erofs-utils=$VER failed"
DSC=$(ls "$DEST"/src/erofs-utils_*.dsc 2>/dev/null | head -n1) || true
[[ -n "$DSC" ]] || fail "no .dsc downloaded for erofs-utils $VER"

STEP="unpack"
WORK="$DEST/work"
rm -rf "$WORK"
dpkg-source --no-copy -x "$DSC" "$WORK" >>"$LOG" 2>&1 || fail "dpkg-source -x $DSC failed"

# ---------------------------------------------------------------- 4. build
CONF_FLAGS=(--disable-silent-rules --disable-debug --disable-werror --disable-fuzzing
	--enable-multithreading
	--enable-lz4 --enable-lzma --with-zlib --with-libdeflate --with-libzstd --with-xxhash
	--with-uuid --without-selinux
	--disable-fuse --disable-oci --disable-s3 --disable-ublk --disable-fanotify
	--without-libcurl --without-openssl --without-libxml2 --without-json-c --without-libnl3
	--without-qpl)

STEP="autogen"
echo "$ME: autogen + configure"
(cd "$WORK" && ./autogen.sh) >>"$LOG" 2>&1 || fail "autogen.sh failed"
STEP="configure"
(cd "$WORK" && ./configure "${CONF_FLAGS[@]}") >>"$LOG" 2>&1 || fail "configure failed"
STEP="make"
echo "$ME: make -j${JOBS:-2}"
(cd "$WORK" && make -j"${JOBS:-2}") >>"$LOG" 2>&1 || fail "make failed"

# ---------------------------------------------------------------- 5. install into DEST/bin
STEP="check"
for t in mkfs/mkfs.erofs fsck/fsck.erofs dump/dump.erofs; do
	[[ -x "$WORK/$t" ]] || fail "$t was not built"
	# libtool wrapper scripts would break once copied; the real binaries are ELF files.
	head -c4 "$WORK/$t" | grep -q 'ELF' || fail "$WORK/$t is not an ELF binary (libtool wrapper?)"
done
is_19 "$WORK/mkfs/mkfs.erofs" || fail "built mkfs.erofs reports '$("$WORK/mkfs/mkfs.erofs" --version 2>&1 | head -n1)', not 1.9.x"
help=$("$WORK/mkfs/mkfs.erofs" --help 2>&1) || true
for opt in --tar --aufs --ovlfs-strip; do
	grep -q -- "$opt" <<<"$help" || fail "built mkfs.erofs --help does not list $opt"
done

STEP="install"
rm -rf "$DEST/bin.tmp"
mkdir -p "$DEST/bin.tmp"
for t in mkfs/mkfs.erofs fsck/fsck.erofs dump/dump.erofs; do
	install -m 0755 "$WORK/$t" "$DEST/bin.tmp/"
done
{
	echo "erofs-utils Debian source version: $VER"
	echo "mkfs.erofs --version: $("$WORK/mkfs/mkfs.erofs" --version 2>&1 | head -n1)"
	echo "configure flags: ${CONF_FLAGS[*]}"
	echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
} >"$DEST/BUILD-INFO"
rm -rf "$BIN"
mv "$DEST/bin.tmp" "$BIN"
rm -rf "$WORK"

cached || fail "installed binaries in $BIN do not pass the 1.9.x check"
echo "$ME: done in $(($(date +%s) - START)) s: $("$BIN/mkfs.erofs" --version 2>&1 | head -n1) -> $BIN"
