#!/usr/bin/env bash
# tests/system/install-test.sh: installs the .deb on a real systemd and checks it as an
# operator would (issue 8). As root:
#
#   tests/system/install-test.sh
#
# 1. builds two .debs and an .rpm of the dev-profile binaries (`cargo test` has built them; a
#    release build is not needed to test the packaging): the current version and a newer one,
#    and checks the .rpm from outside (rpmlint, the directories it owns, stripped binaries);
# 2. debootstraps a minimal Debian bookworm with systemd, while the packages build (cached
#    under target/install-test/cache, or $INSTALL_TEST_CACHE: a second run skips it);
# 3. boots a copy of it with systemd-nspawn (its own network namespace: only loopback, so the
#    packaged default ports are fine) and waits for multi-user;
# 4. runs tests/system/install-checks.sh inside it (install, start, tunnelizectl, reload,
#    journal, a tunnel@ instance forwarding, stop, upgrade, purge; then the .rpm installed and
#    erased with rpm), which prints a PASS or FAIL line per check;
# 5. stops the container and removes it, its cgroups and its copy of the file system, also on
#    failure or Ctrl-C.
#
# Exits 0 when every check passed. Needs debootstrap, systemd-nspawn (systemd-container),
# rpmbuild and rpmlint (rpm, rpmlint) and nsenter; installs all but the last with apt-get when
# missing. Environment:
#   INSTALL_TEST_PROFILE=release   package release binaries instead (default: dev)
#   INSTALL_TEST_KEEP=1            keep the container's file system (target/install-test/run.*)
#   INSTALL_TEST_CACHE=DIR         where the debootstrapped file system is kept between runs
#                                  (default target/install-test/cache; a folder outside the
#                                  work tree survives fresh clones)
#   DEBIAN_MIRROR=URL              default http://deb.debian.org/debian
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$ROOT/target/install-test
CACHE=${INSTALL_TEST_CACHE:-$WORK/cache}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PROFILE=${INSTALL_TEST_PROFILE:-dev}
# What the checks use besides systemd: apt's dependency resolution needs adduser (a Depends:
# of the package) already there, as the container has no network; busybox is the local
# target (httpd); curl the client; procps ps; rpm installs and erases the .rpm (on Debian: the
# same systemd, another package manager).
INCLUDE=systemd,systemd-sysv,dbus,adduser,busybox,curl,procps,rpm

START=$SECONDS
PHASE_START=$SECONDS
TIMES=()
phase_done() {
  TIMES+=("$(printf '%-22s %4ss' "$1" $((SECONDS - PHASE_START)))")
  PHASE_START=$SECONDS
}
say() { echo "install-test: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || { say "must run as root (it boots a container)"; exit 2; }

# --- tools -------------------------------------------------------------------------------
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v rpmbuild >/dev/null || missing+=(rpm)
command -v rpmlint >/dev/null || missing+=(rpmlint)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v nsenter >/dev/null || die "nsenter (util-linux) is missing"
phase_done "tools"

# Mounts left below DIR (debootstrap mounts /proc and /sys in its target; a run stopped
# half-way may leave them), innermost first; fails if one stays.
unmount_below() {
  local dir=$1 mnt
  for mnt in $(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
  done
  ! awk -v d="$dir/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts
}

# --- debootstrap (cached; in the background while the packages build) -------------------
KEY=$(echo "$SUITE $MIRROR $INCLUDE" | sha256sum | cut -c1-12)
BASE=$CACHE/$SUITE-$KEY
DEBOOTSTRAP=
if [ ! -e "$BASE/.complete" ]; then
  say "debootstrap $SUITE into $BASE (cached for the next run)"
  mkdir -p "$CACHE"
  unmount_below "$BASE.tmp" || die "mounts are left below $BASE.tmp"
  rm -rf "$BASE" "$BASE.tmp"
  # A process group of its own, so that a failing run can stop all of it.
  setsid debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$BASE.tmp" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 </dev/null &
  DEBOOTSTRAP=$!
fi
stop_debootstrap() {
  [ -n "$DEBOOTSTRAP" ] || return 0
  if kill -0 "$DEBOOTSTRAP" 2>/dev/null; then
    kill -TERM -- "-$DEBOOTSTRAP" 2>/dev/null || true
    wait "$DEBOOTSTRAP" 2>/dev/null || true
    unmount_below "$BASE.tmp" && rm -rf "$BASE.tmp"
  fi
  DEBOOTSTRAP=
}
trap stop_debootstrap EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- packages ----------------------------------------------------------------------------
DEBS=$WORK/debs
rm -rf "$DEBS"
mkdir -p "$DEBS"
say "building the packages ($PROFILE profile)"
# After `cargo test` the dev-profile binaries are up to date: this takes a second.
(cd "$ROOT" && cargo build --profile "$PROFILE" --bin tunnelize --bin tunnelizectl)
BUILT=$("$ROOT/packaging/build.sh" --no-build --profile "$PROFILE" --output "$DEBS")
FIRST=$(echo "$BUILT" | grep '\.deb$' | tail -n 1)
RPM=$(echo "$BUILT" | grep '\.rpm$' | tail -n 1)
[ -f "$RPM" ] || die "build.sh did not make the .rpm (it printed: $BUILT)"
VERSION=$(dpkg-deb -f "$FIRST" Version)
SECOND=$("$ROOT/packaging/build.sh" --no-build --profile "$PROFILE" --deb-only --output "$DEBS" \
  --deb-version "$VERSION+upgrade1" | tail -n 1)
[ -f "$FIRST" ] && [ -f "$SECOND" ] || die "build.sh did not make two packages ($FIRST, $SECOND)"
dpkg --compare-versions "$(dpkg-deb -f "$SECOND" Version)" gt "$VERSION" ||
  die "the upgrade package's version is not newer"
say "packages: $(basename "$FIRST") $(basename "$SECOND") $(basename "$RPM")"
phase_done "packages"

# --- the .rpm from outside ---------------------------------------------------------------
# PASS/FAIL lines as the container's checks print them; counted with them at the end.
HOST_LOG=$WORK/host-checks.log
: >"$HOST_LOG"
host_check() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "PASS: $what" | tee -a "$HOST_LOG" >&2
  else
    { echo "FAIL: $what"; echo "$out" | tail -n 40 | sed -e 's/^/    | /'; } | tee -a "$HOST_LOG" >&2
  fi
}
rpmlint_clean() {
  local report
  report=$(rpmlint -c "$ROOT/packaging/rpmlint.toml" "$RPM" 2>&1) || true
  echo "$report"
  echo "$report" | grep -q ' 0 errors, 0 warnings'
}
host_check "rpmlint finds nothing that packaging/rpmlint.toml does not explain" rpmlint_clean
owns_dirs() {
  local listing dir
  listing=$(rpm -qlp "$RPM")
  for dir in /etc/tunnelize /usr/share/doc/tunnelize /usr/share/doc/tunnelize/examples \
    /usr/share/licenses/tunnelize; do
    echo "$listing" | grep -qx "$dir" || { echo "rpm -qlp does not list $dir"; return 1; }
  done
}
host_check "rpm -qlp: the package owns /etc/tunnelize and its doc and licence directories" owns_dirs
stripped() {
  local dir bin found=0
  dir=$(mktemp -d "$WORK/rpm-files.XXXXXX")
  (cd "$dir" && rpm2cpio "$RPM" | cpio -id --quiet ./usr/bin/tunnelize ./usr/bin/tunnelizectl)
  for bin in tunnelize tunnelizectl; do
    [ -s "$dir/usr/bin/$bin" ] || { echo "$bin is not in the package"; found=1; continue; }
    # (.debug_gdb_scripts stays: a few loaded bytes naming rustc's gdb helpers, not debug data.)
    if readelf -SW "$dir/usr/bin/$bin" | grep -E ' \.(symtab|debug_info|debug_line|debug_str) '; then
      echo "$bin has a symbol table or debug sections"
      found=1
    fi
  done
  rm -rf "$dir"
  return $found
}
host_check "the .rpm's binaries are stripped (no symbol table, no debug information)" stripped
description() {
  rpm -qp --qf '%{SUMMARY}\n%{DESCRIPTION}\n' "$RPM"
  [ "$(rpm -qp --qf '%{DESCRIPTION}' "$RPM")" != "$(rpm -qp --qf '%{SUMMARY}' "$RPM")" ] &&
    rpm -qp --qf '%{DESCRIPTION}' "$RPM" | grep -q 'behind NAT'
}
host_check "the .rpm's description says more than its summary" description

# --- debootstrap: its end ----------------------------------------------------------------
if [ -n "$DEBOOTSTRAP" ]; then
  if ! wait "$DEBOOTSTRAP"; then
    DEBOOTSTRAP=
    tail -n 20 "$CACHE/debootstrap.log" >&2
    unmount_below "$BASE.tmp" || true
    die "debootstrap failed (log: $CACHE/debootstrap.log)"
  fi
  DEBOOTSTRAP=
  unmount_below "$BASE.tmp" || die "debootstrap left mounts below $BASE.tmp"
  # Not needed in a throwaway container, and they make the copy slower.
  rm -rf "$BASE.tmp"/var/cache/apt/archives/*.deb
  touch "$BASE.tmp/.complete"
  mv "$BASE.tmp" "$BASE"
fi
phase_done "debootstrap (rest)"

# --- boot --------------------------------------------------------------------------------
RUN=$(mktemp -d "$WORK/run.XXXXXX")
MACHINE=tunnelize-install-$(basename "$RUN" | cut -d. -f2)
NSPAWN= LEADER=
CGROUPS=()

# The container and everything it started go; so do its cgroups and its file system copy.
cleanup() {
  local rc=$? deadline
  trap - EXIT INT TERM
  stop_debootstrap
  if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
    # SIGTERM makes systemd-nspawn ask the container's systemd for an orderly poweroff.
    kill -TERM "$NSPAWN" 2>/dev/null || true
    deadline=$((SECONDS + 60))
    while kill -0 "$NSPAWN" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$NSPAWN" 2>/dev/null; then
      say "the container did not power off within 60s; killing it"
      [ -z "$LEADER" ] || kill -KILL "$LEADER" 2>/dev/null || true
      kill -KILL "$NSPAWN" 2>/dev/null || true
    fi
    wait "$NSPAWN" 2>/dev/null || true
  fi
  # Innermost first: nspawn makes payload/ and supervisor/ in the cgroup it started in.
  local cg
  for cg in "${CGROUPS[@]}"; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$cg" ] || { say "cgroup $cg is still there"; rc=1; }
  done
  rmdir "/run/systemd/nspawn/propagate/$MACHINE" 2>/dev/null || true
  if grep -q " $RUN" /proc/self/mounts; then
    say "mounts are left under $RUN; not removing it"
    rc=1
  elif [ "${INSTALL_TEST_KEEP:-0}" = 1 ]; then
    say "kept $RUN"
  elif [ $rc = 0 ]; then
    rm -rf "$RUN"
  else
    rm -rf "$RUN/rootfs"
    say "logs: $RUN"
  fi
  exit $rc
}
trap cleanup EXIT

say "copying the file system into $RUN"
cp -a "$BASE" "$RUN/rootfs"
phase_done "copy"

# The container gets a cgroup of its own in each hierarchy systemd uses (cgroup2, and the
# name=systemd one on a hybrid host), below the one this script runs in, so nothing of it
# stays behind and two runs do not meet.
while IFS=' ' read -r _ _ _ root mnt _ rest; do
  fstype=${rest#*- }
  fstype=${fstype%% *}
  case "$fstype" in
    cgroup2) controller= ;;
    cgroup) case "$rest" in *name=systemd*) controller=name=systemd ;; *) continue ;; esac ;;
    *) continue ;;
  esac
  [ "$root" = / ] || continue
  if [ -z "$controller" ]; then
    own=$(sed -n 's/^0:://p' /proc/self/cgroup)
  else
    own=$(sed -n "s/^[0-9]*:$controller://p" /proc/self/cgroup)
  fi
  [ -n "$own" ] && [ -w "$mnt$own" ] || continue
  CGROUPS+=("${mnt%/}${own%/}/$MACHINE")
done </proc/self/mountinfo
for cg in "${CGROUPS[@]}"; do mkdir "$cg"; done

say "booting $MACHINE"
(
  for cg in "${CGROUPS[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs"; done
  exec systemd-nspawn --boot --quiet --directory="$RUN/rootfs" --machine="$MACHINE" \
    --register=no --keep-unit --private-network --console=passive \
    --bind-ro="$DEBS:/mnt/debs" --bind-ro="$ROOT/tests/system:/mnt/tests"
) >"$RUN/console.log" 2>&1 </dev/null &
NSPAWN=$!

deadline=$((SECONDS + 60))
until LEADER=$(ps -o pid= --ppid "$NSPAWN" 2>/dev/null | tr -d ' ' | head -n 1) && [ -n "$LEADER" ] &&
  [ "$(cat /proc/"$LEADER"/comm 2>/dev/null)" = systemd ]; do
  kill -0 "$NSPAWN" 2>/dev/null || { cat "$RUN/console.log" >&2; die "systemd-nspawn exited"; }
  [ $SECONDS -lt $deadline ] || { cat "$RUN/console.log" >&2; die "no systemd in the container after 60s"; }
  sleep 0.2
done
inside() {
  nsenter --target "$LEADER" --all -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 HOME=/root TERM=dumb "$@"
}
# systemctl answers once the container's systemd has its private socket; --wait then
# returns when the boot is over (running, or degraded when a unit failed).
deadline=$((SECONDS + 120))
until state=$(inside timeout 120 systemctl is-system-running --wait 2>/dev/null); [ "$state" = running ] ||
  [ "$state" = degraded ] || [ "$state" = maintenance ]; do
  kill -0 "$NSPAWN" 2>/dev/null || { cat "$RUN/console.log" >&2; die "systemd-nspawn exited"; }
  [ $SECONDS -lt $deadline ] || die "systemd in the container does not answer: ${state:-nothing} (log: $RUN/console.log)"
  sleep 0.2
done
if [ "$state" != running ]; then
  inside systemctl --failed --no-pager >&2 || true
  die "the container's systemd is $state, not running"
fi
say "the container's systemd reached $(inside systemctl show -P ActiveState multi-user.target) multi-user.target"
phase_done "boot"

# --- checks ------------------------------------------------------------------------------
# In the background: bash runs a signal's trap (the cleanup) only once a foreground command
# ends, while `wait` returns at once.
(inside /bin/bash /mnt/tests/install-checks.sh "/mnt/debs/$(basename "$FIRST")" \
  "/mnt/debs/$(basename "$SECOND")" "/mnt/debs/$(basename "$RPM")" 2>&1 | tee "$RUN/checks.log") &
checks=0
wait $! || checks=$?
phase_done "checks"

say "times on this machine:"
for t in "${TIMES[@]}"; do echo "    $t" >&2; done
echo "    $(printf '%-22s %4ss' total $((SECONDS - START)))" >&2
# Kept after the run directory goes.
cat "$HOST_LOG" "$RUN/checks.log" >"$WORK/checks.log"
passed=$(grep -c '^PASS: ' "$WORK/checks.log" || true)
failed=$(grep -c '^FAIL: ' "$WORK/checks.log" || true)
if [ "$checks" = 0 ] && [ "$failed" = 0 ] && [ "$passed" -gt 0 ]; then
  say "PASS: all $passed checks passed (log: $WORK/checks.log)"
else
  say "FAIL: $failed of $((passed + failed)) checks failed (exit status $checks; log: $WORK/checks.log)"
  exit 1
fi
