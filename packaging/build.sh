#!/usr/bin/env bash
# packaging/build.sh: builds the .deb and the .rpm of tunnelize from Cargo.toml's metadata.
#
#   packaging/build.sh            -> target/packaging/tunnelize_<version>_<arch>.deb and .rpm
#   packaging/build.sh --check    also runs lintian and rpmlint on them (installed if missing)
#
# Installs cargo-deb and cargo-generate-rpm into target/packaging/tools when they are not on
# PATH. Man pages and shell completions are generated from the CLI definitions first, so the
# packages ship what the binaries actually accept.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/target/packaging
TOOLS=$OUT/tools
CHECK=0
[ "${1:-}" = --check ] && CHECK=1
cd "$ROOT"
mkdir -p "$OUT"

export PATH="$TOOLS/bin:$PATH"
for tool in cargo-deb:cargo-deb cargo-generate-rpm:cargo-generate-rpm; do
  crate=${tool%%:*} bin=${tool##*:}
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "installing $crate into $TOOLS" >&2
    cargo install --locked --root "$TOOLS" "$crate" >&2
  fi
done

cargo build --release --bin tunnelize --bin tunnelizectl >&2
GEN=$OUT/generated
rm -rf "$GEN"; mkdir -p "$GEN/man" "$GEN/completions"
target/release/tunnelizectl man "$GEN/man" >&2
target/release/tunnelize man "$GEN/man" >&2
gzip -9n "$GEN"/man/*.1
target/release/tunnelizectl completions bash >"$GEN/completions/tunnelizectl.bash"
target/release/tunnelizectl completions zsh >"$GEN/completions/_tunnelizectl"
target/release/tunnelizectl completions fish >"$GEN/completions/tunnelizectl.fish"

cargo deb --no-build --strip --output "$OUT/" >&2
cargo generate-rpm --output "$OUT/" >&2
ls -1 "$OUT"/*.deb "$OUT"/*.rpm

if [ $CHECK = 1 ]; then
  missing=()
  command -v lintian >/dev/null || missing+=(lintian)
  command -v rpmlint >/dev/null || missing+=(rpmlint)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
  echo "== lintian" >&2
  # Suppressed, on purpose: the prerm stops the units with systemctl (debhelper would generate
  # the same); the example configurations under /etc are 0640 because they hold keys.
  lintian --fail-on error --suppress-tags-from-file "$ROOT/packaging/lintian-overrides.txt" "$OUT"/*.deb
  echo "== rpmlint (findings explained in packaging/rpmlint.toml)" >&2
  rpmlint -c "$ROOT/packaging/rpmlint.toml" "$OUT"/*.rpm || true
fi
