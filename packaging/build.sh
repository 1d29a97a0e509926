#!/usr/bin/env bash
# packaging/build.sh: builds the .deb and the .rpm of tunnelize from Cargo.toml's metadata.
#
#   packaging/build.sh            -> target/packaging/tunnelize_<version>_<arch>.deb and .rpm
#   packaging/build.sh --check    also runs lintian and rpmlint on them (installed if missing)
#
# For tests (tests/system/install-test.sh), packages of the dev-profile binaries that
# `cargo test` has already built, in seconds instead of a release build's minutes:
#
#   packaging/build.sh --profile dev --output DIR [--deb-version 0.1.0-1+test]
#
#   --profile NAME      cargo profile of the binaries (default: release). Any other profile
#                       gets fast compression.
#   --deb-only          no .rpm
#   --deb-version V     the .deb's version, revision included (default: Cargo.toml's, -1)
#   --no-build          package the binaries as they are (no `cargo build` first)
#   --output DIR        where the packages go (default: target/packaging)
#
# Installs cargo-deb into target/packaging/tools, or $TUNNELIZE_PACKAGING_TOOLS, when it is
# not on PATH. The .rpm is packaging/rpm/tunnelize.spec built by rpmbuild (Debian's package
# rpm, Fedora's rpm-build), which build.sh installs with apt-get when it runs as root and
# rpmbuild is missing. Man pages and shell completions are generated from the CLI
# definitions first, so the packages ship what the binaries accept. Prints the path of each
# package it wrote, one per line, on its standard output.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/target/packaging
TOOLS=${TUNNELIZE_PACKAGING_TOOLS:-$ROOT/target/packaging/tools}
CHECK=0 PROFILE=release DEB_ONLY=0 DEB_VERSION= BUILD=1
usage() { sed -n '2,22s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --check) CHECK=1 ;;
    --profile) PROFILE=${2:?--profile needs a name}; shift ;;
    --deb-only) DEB_ONLY=1 ;;
    --deb-version) DEB_VERSION=${2:?--deb-version needs a version}; shift ;;
    --output) OUT=${2:?--output needs a directory}; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage ;;
    *) echo "build.sh: unknown argument $1" >&2; usage ;;
  esac
  shift
done
cd "$ROOT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

case "$PROFILE" in
  dev) BIN_DIR=debug ;;
  *) BIN_DIR=$PROFILE ;;
esac
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$BIN_DIR

export PATH="$TOOLS/bin:$PATH"
# Pinned: cargo-deb warns that --profile dev may become an error in a later version.
tools=(cargo-deb@3.8.0)
for tool in "${tools[@]}"; do
  if ! command -v "${tool%@*}" >/dev/null 2>&1; then
    echo "installing $tool into $TOOLS" >&2
    cargo install --locked --root "$TOOLS" "$tool" >&2
  fi
done
if [ $DEB_ONLY = 0 ] && ! command -v rpmbuild >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing rpm (for rpmbuild)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >&2
  else
    echo "build.sh: rpmbuild is missing: install it (apt-get install rpm, dnf install rpm-build)" \
      "or build the .deb alone with --deb-only" >&2
    exit 1
  fi
fi

# After `cargo test` the dev-profile binaries are up to date and this takes a second.
[ $BUILD = 0 ] || cargo build --profile "$PROFILE" --bin tunnelize --bin tunnelizectl >&2
for bin in tunnelize tunnelizectl; do
  [ -x "$BIN/$bin" ] || { echo "build.sh: $BIN/$bin is not built" >&2; exit 1; }
done
# Written aside, then moved into place: the assets in Cargo.toml name this directory.
GEN=$ROOT/target/packaging/generated
mkdir -p "$ROOT/target/packaging"
NEW=$(mktemp -d "$ROOT/target/packaging/generated.XXXXXX")
trap 'rm -rf "$NEW"' EXIT
mkdir -p "$NEW/man" "$NEW/completions"
"$BIN/tunnelizectl" man "$NEW/man" >&2
"$BIN/tunnelize" man "$NEW/man" >&2
gzip -9n "$NEW"/man/*.1
"$BIN/tunnelizectl" completions bash >"$NEW/completions/tunnelizectl.bash"
"$BIN/tunnelizectl" completions zsh >"$NEW/completions/_tunnelizectl"
"$BIN/tunnelizectl" completions fish >"$NEW/completions/tunnelizectl.fish"
# The .deb's changelog, whose first entry must be the package's version (lintian, and
# `apt changelog`): packaging/debian/changelog, with an entry on top for --deb-version when
# that is another version.
CHANGELOG=$ROOT/packaging/debian/changelog
TOP=$(sed -n '1s/^tunnelize (\([^)]*\)).*/\1/p' "$CHANGELOG")
if [ -n "$DEB_VERSION" ] && [ "$DEB_VERSION" != "$TOP" ]; then
  {
    printf 'tunnelize (%s) unstable; urgency=medium\n\n' "$DEB_VERSION"
    printf '  * Built as version %s from %s (packaging/build.sh --deb-version).\n\n' \
      "$DEB_VERSION" "$TOP"
    printf ' -- tunnelize developers <tunnelize@lists.tunnelize.invalid>  %s\n\n' \
      "$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")"
    cat "$CHANGELOG"
  } >"$NEW/changelog"
else
  cp "$CHANGELOG" "$NEW/changelog"
fi
chmod 0755 "$NEW"
rm -rf "$GEN"
mv "$NEW" "$GEN"

deb_args=(--no-build --strip --output "$OUT/")
[ "$PROFILE" = release ] || deb_args+=(--profile "$PROFILE" --fast)
[ -z "$DEB_VERSION" ] || deb_args+=(--deb-version "$DEB_VERSION")
# cargo-deb prints the path of the package it wrote: the one line on our standard output.
cargo deb "${deb_args[@]}"
if [ $DEB_ONLY = 0 ]; then
  VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
  ARCH=$(uname -m)
  TOP=$(mktemp -d "$ROOT/target/packaging/rpmbuild.XXXXXX")
  trap 'rm -rf "$NEW" "$TOP"' EXIT
  rpm_args=(
    --define "_topdir $TOP" --define "_rpmdir $OUT"
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm"
    --define "tz_version $VERSION" --define "tz_release 1" --define "tz_root $ROOT"
    --define "tz_bin $BIN" --define "tz_gen $GEN"
  )
  [ "$PROFILE" = release ] || rpm_args+=(--define "_binary_payload w1.gzdio")
  rpmbuild -bb --quiet --target "$ARCH" "${rpm_args[@]}" "$ROOT/packaging/rpm/tunnelize.spec" >&2
  echo "$OUT/tunnelize-$VERSION-1.$ARCH.rpm"
fi

if [ $CHECK = 1 ]; then
  missing=()
  command -v lintian >/dev/null || missing+=(lintian)
  [ $DEB_ONLY = 1 ] || command -v rpmlint >/dev/null || missing+=(rpmlint)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
  echo "== lintian" >&2
  # Suppressed, on purpose: the prerm stops the units with systemctl (debhelper would generate
  # the same); the example configurations under /etc are 0640 because they hold keys; the
  # package is not uploaded to Debian, so its changelog closes no Debian bug.
  lintian --fail-on error --suppress-tags-from-file "$ROOT/packaging/lintian-overrides.txt" "$OUT"/*.deb >&2
  if [ $DEB_ONLY = 0 ]; then
    # Clean, or build.sh fails: each finding that stays is filtered with its reason in
    # packaging/rpmlint.toml.
    echo "== rpmlint (findings explained in packaging/rpmlint.toml)" >&2
    report=$(rpmlint -c "$ROOT/packaging/rpmlint.toml" "$OUT"/*.rpm 2>&1) || true
    echo "$report" >&2
    echo "$report" | grep -q ' 0 errors, 0 warnings' ||
      { echo "build.sh: rpmlint has findings that packaging/rpmlint.toml does not explain" >&2; exit 1; }
  fi
fi
