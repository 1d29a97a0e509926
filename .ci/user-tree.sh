# Sourced by .ci/run: a copy of the work tree that an unprivileged user can build and test, so
# that `cargo test` runs as that user (the README's "anyone can run it") and only the ignored
# tests run as root.
#
# CI runs as root, and root's toolchain and crate cache live under /root, which no other user
# may enter. `user_tree DIR` lays out, in DIR (mode 0755):
#   DIR/toolchain   the active toolchain (`rustc --print sysroot`), hard-linked when DIR is on
#                   the same file system, else copied: cargo and rustc run from it directly,
#                   without rustup;
#   DIR/cargo-home  a CARGO_HOME seeded with root's registry (index, downloaded crates), so
#                   nothing is downloaded again;
#   DIR/home        HOME for the user;
#   DIR/src         the tracked and untracked-but-not-ignored files of the work tree, where
#                   target/ will be.
# Everything but the toolchain belongs to the user. Root then builds and tests in DIR/src with
# the same environment (`in_tree`), so the user's build is reused and nothing compiles twice;
# root can write to the user's files, the user cannot write to any that root made.

CI_USER=nobody
CI_GROUP=nogroup

# user_tree DIR: lays out DIR as above from the work tree in the current directory.
user_tree() {
  local dir=$1 sysroot registry
  sysroot=$(rustc --print sysroot)
  registry=${CARGO_HOME:-$HOME/.cargo}/registry
  chmod 0755 "$dir"
  if ! cp -al "$sysroot" "$dir/toolchain" 2>/dev/null; then
    # Another file system: hard links fail (perhaps halfway), a copy does not.
    rm -rf "$dir/toolchain"
    cp -a "$sysroot" "$dir/toolchain"
  fi
  mkdir -p "$dir/cargo-home" "$dir/home" "$dir/src"
  if [ -d "$registry" ]; then
    cp -a "$registry" "$dir/cargo-home/registry"
  fi
  git ls-files -z --cached --others --exclude-standard |
    tar --null --files-from=- --ignore-failed-read -cf - | tar -C "$dir/src" -xf -
  chown -R "$CI_USER:$CI_GROUP" "$dir/cargo-home" "$dir/home" "$dir/src"
}

# in_tree DIR COMMAND...: runs COMMAND in DIR/src, as the caller (root), in the environment
# the user's tests ran in: DIR's toolchain and cargo home, HOME=DIR/home, and a PATH without
# root's own directories (the user could not enter them). The same environment matters: with
# another cargo home or toolchain path, cargo would build everything again.
in_tree() {
  local dir=$1
  shift
  (cd "$dir/src" &&
    env -u RUSTUP_TOOLCHAIN -u CARGO_TARGET_DIR CARGO_HOME="$dir/cargo-home" HOME="$dir/home" \
      PATH="$dir/toolchain/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      RUSTC="$dir/toolchain/bin/rustc" "$@")
}

# as_user DIR COMMAND...: the same as the unprivileged user, without supplementary groups.
as_user() {
  local dir=$1
  shift
  in_tree "$dir" setpriv --reuid="$CI_USER" --regid="$CI_GROUP" --clear-groups \
    env USER="$CI_USER" LOGNAME="$CI_USER" "$@"
}
