#!/bin/bash
# tests/system/install-checks.sh: the checks of the install test, run *inside* the booted
# Debian container by install-test.sh (as root, under the container's own systemd):
#
#   install-checks.sh FIRST.deb UPGRADE.deb PACKAGE.rpm
#
# Installs the package with apt, then checks what an operator does with it, in order: the
# unedited hub refuses to start, a configured one reaches `active` through sd_notify, a member
# of group tunnelize-admin uses tunnelizectl over the socket, reload, structured journal entries, a
# tunnel@ instance forwarding through the hub, a clean stop, an upgrade that keeps the edited
# configuration, and a purge that removes it; then the .rpm, installed with rpm and erased.
# Prints one PASS or FAIL line per check (and the evidence of each failure) and exits with the
# number of failures.
set -u
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
USAGE="usage: install-checks.sh FIRST.deb UPGRADE.deb PACKAGE.rpm"
DEB=${1:?$USAGE}
UPGRADE=${2:?$USAGE}
RPM=${3:?$USAGE}
FAILS=0
LOG=/tmp/install-checks.out   # the output of the last command a check ran
J=/tmp/install-checks.journal # the journal excerpt a check reads

pass() { echo "PASS: $*"; }
fail() {
  echo "FAIL: $*"
  FAILS=$((FAILS + 1))
  [ -s "$LOG" ] && sed -e 's/^/    | /' "$LOG" | tail -n 40
  return 0
}
# check DESCRIPTION COMMAND...: the command's success is the check.
check() {
  local what=$1
  shift
  if "$@" >"$LOG" 2>&1; then pass "$what"; else fail "$what"; fi
}
# check_not DESCRIPTION COMMAND...: the command's failure is the check.
check_not() {
  local what=$1
  shift
  if "$@" >"$LOG" 2>&1; then fail "$what (it succeeded)"; else pass "$what"; fi
}
# poll SECONDS COMMAND...: runs the command every 0.2 s until it succeeds or the deadline passes.
poll() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
# Each check reads the journal from its own starting point: a marker entry of its own, which
# no unit's match selects. (--after-cursor with a match, in systemd 252, skips the first
# matching entry when the cursor's own entry does not match; --cursor does not.)
cursor() {
  local tag=install-checks-$RANDOM$RANDOM
  echo mark | systemd-cat -t "$tag"
  poll 10 sh -c "journalctl -q -t $tag -o cat | grep -q mark" || return 1
  journalctl -q -t "$tag" -n 1 --show-cursor -o cat | sed -n 's/^-- cursor: //p'
}
journal_since() { journalctl -q --no-pager --cursor="$1" "${@:2}"; }
prop() { systemctl show -P "$2" "$1"; }
# has_props UNIT K=V...: every property has that value (prints them all when one differs).
has_props() {
  local unit=$1 want ok=0
  shift
  for want in "$@"; do
    local got
    got=$(prop "$unit" "${want%%=*}")
    echo "${want%%=*}=$got"
    [ "$got" = "${want#*=}" ] || ok=1
  done
  return $ok
}
# listen_port PID: the port of PID's listening TCP socket, from /proc/net/tcp.
listen_port() {
  local inode hex
  for inode in $(ls -l /proc/$1/fd 2>/dev/null | sed -n 's/.*socket:\[\([0-9]*\)\].*/\1/p'); do
    hex=$(awk -v ino="$inode" '$4 == "0A" && $10 == ino { split($2, a, ":"); print a[2] }' /proc/net/tcp)
    [ -n "$hex" ] && { printf '%d\n' "0x$hex"; return 0; }
  done
  return 1
}
mode_owner() { [ "$(stat -c '%a %U %G' "$1")" = "$2" ] || { stat -c '%n: %a %U %G, wanted '"$2" "$1"; false; }; }
as_alice() { runuser -u alice -- "$@"; }
# contains PATTERN: the journal excerpt in $J has a matching line (else shows the excerpt).
contains() { grep -q -e "$1" "$J" || { echo "no line matches: $1"; tail -n 30 "$J"; false; }; }

HUB=tunnelize-hub.service
TUNNEL=tunnelize-tunnel@demo.service
CONF=/etc/tunnelize

echo "== install ($(basename "$DEB"))"
check "apt-get installs the package, resolving its dependencies" \
  apt-get install -y --no-install-recommends "$DEB"
check "it recommends ca-certificates (a tunnel's default trust needs the system's roots)" \
  sh -c "dpkg-query -W -f '\${Recommends}' tunnelize | grep -qw ca-certificates"
check "dpkg lists it as installed" sh -c "dpkg-query -W -f '\${Status}' tunnelize | grep -qx 'install ok installed'"
check "the binaries run" sh -c 'tunnelize --version && tunnelizectl --version'
check "systemd knows the units (postinst ran daemon-reload)" \
  sh -c 'systemctl cat tunnelize-hub.service tunnelize-tunnel.service tunnelize-tunnel@x.service >/dev/null'
check "systemd-analyze verify accepts the installed units" \
  systemd-analyze verify /usr/lib/systemd/system/tunnelize-hub.service \
  /usr/lib/systemd/system/tunnelize-tunnel.service /usr/lib/systemd/system/tunnelize-tunnel@.service
check "system user tunnelize: home /var/lib/tunnelize, no login shell" \
  sh -c 'getent passwd tunnelize | grep -E "^tunnelize:x:[0-9]+:[0-9]+:[^:]*:/var/lib/tunnelize:/usr/sbin/nologin$" &&
    [ "$(id -u tunnelize)" -lt 1000 ] && getent group tunnelize'
check "group tunnelize-admin, for the operators, exists" getent group tunnelize-admin
check "/etc/tunnelize is 0750 root:tunnelize" mode_owner $CONF "750 root tunnelize"
check "hub.toml is 0640 root:tunnelize" mode_owner $CONF/hub.toml "640 root tunnelize"
check "tunnel.toml is 0640 root:tunnelize" mode_owner $CONF/tunnel.toml "640 root tunnelize"
check "/var/lib/tunnelize is 0750 tunnelize:tunnelize" mode_owner /var/lib/tunnelize "750 tunnelize tunnelize"
check "/run/tunnelize is 0755 tunnelize:tunnelize (only sockets, each 0660)" mode_owner /run/tunnelize "755 tunnelize tunnelize"
check "the conffiles are registered with dpkg" \
  sh -c "dpkg-query -W -f '\${Conffiles}' tunnelize | grep -q ' /etc/tunnelize/hub.toml ' &&
    dpkg-query -W -f '\${Conffiles}' tunnelize | grep -q ' /etc/tunnelize/tunnel.toml '"
check_not "check-config refuses the shipped tunnel.toml until its placeholder key is replaced" \
  tunnelize check-config $CONF/tunnel.toml
check "and says so" sh -c "tunnelize check-config $CONF/tunnel.toml 2>&1 | grep -q placeholder"
check "nothing is started or enabled by the install" \
  sh -c '! systemctl is-active -q tunnelize-hub; [ "$(systemctl is-enabled tunnelize-hub)" = disabled ]'

echo "== the unedited hub refuses to start"
C=$(cursor)
check_not "systemctl start tunnelize-hub fails with the shipped hub.toml" systemctl start $HUB
journal_since "$C" -u $HUB -o cat >"$J"
check "the journal says why (no [[keys]])" contains '\[\[keys\]\]' 
# A configuration error exits 78 (RestartPreventExitStatus=78): the unit is failed at once,
# not `activating (auto-restart)` as a restart would leave it.
check "it ends failed, exit status 78, with no restart scheduled" \
  has_props $HUB ActiveState=failed Result=exit-code ExecMainStatus=78 NRestarts=0
check "systemctl status shows the error" sh -c "systemctl status --no-pager -n 20 $HUB | grep -F '[[keys]]'"
systemctl stop $HUB
systemctl reset-failed $HUB 2>/dev/null

echo "== a configured hub starts through sd_notify"
install -d -m 0750 -g tunnelize $CONF/keys
# As hub.toml's instructions say, with no openssl on the path (minimal Debian has none).
check "tunnelize gen-key writes a key, with no openssl to call" \
  env PATH=/nonexistent /usr/bin/tunnelize gen-key $CONF/keys/demo.key
check "the key file is 0640 root:tunnelize" mode_owner $CONF/keys/demo.key "640 root tunnelize"
check_not "gen-key never writes over a key" tunnelize gen-key $CONF/keys/demo.key
KEY=$(cat $CONF/keys/demo.key)
check "the key is 64 hex digits" sh -c "echo '$KEY' | grep -qxE '[0-9a-f]{64}'"
cat >>$CONF/hub.toml <<'EOF'

# Added by the install test.
[[keys]]
name = "demo"
key_file = "/etc/tunnelize/keys/demo.key"
EOF
check "tunnelize check-config accepts the edited hub.toml" tunnelize check-config $CONF/hub.toml
C=$(cursor)
check "systemctl start tunnelize-hub succeeds" systemctl start $HUB
hub_notified() {
  has_props $HUB Type=notify ActiveState=active SubState=running NRestarts=0 &&
    prop $HUB StatusText | grep 'listening for tunnels on 0.0.0.0:7700'
}
check "the hub is active (running), Type=notify, with a STATUS= line" hub_notified
# Where tunnels reach it, read back while its status still says (a reload replaces the text).
HUB_ADDR=127.0.0.1:$(prop $HUB StatusText | sed -n 's/.*listening for tunnels on [0-9.]*:\([0-9]*\).*/\1/p')
hub_identity() {
  local status=/proc/$(prop $HUB MainPID)/status uid gid
  uid=$(id -u tunnelize) gid=$(id -g tunnelize)
  grep -E '^(Uid|Gid|Cap)' "$status" &&
    grep -qE "^Uid:\s+$uid\s+$uid\s+$uid\s+$uid$" "$status" &&
    grep -qE "^Gid:\s+$gid\s+$gid\s+$gid\s+$gid$" "$status" &&
    grep -qE '^CapEff:\s+0000000000000400$' "$status"
}
check "it runs as user tunnelize with only CAP_NET_BIND_SERVICE" hub_identity
check "the watchdog is armed (WatchdogUSec=30s)" has_props $HUB WatchdogUSec=30s
# A crash is not a configuration error: systemd starts the hub again.
CRASHED=$(prop $HUB MainPID)
kill -KILL "$CRASHED"
restarted() {
  has_props $HUB ActiveState=active SubState=running NRestarts=1 >/dev/null &&
    [ "$(prop $HUB MainPID)" != "$CRASHED" ]
}
check "a hub killed by SIGKILL is restarted (NRestarts=1, a new process)" poll 30 restarted
journal_since "$C" -u $HUB -o json >"$J"
FP=$(grep -o '"FINGERPRINT":"[^"]*"' "$J" | head -n 1 | cut -d'"' -f4)
: >"$LOG"
if [ -n "$FP" ]; then pass "the journal has the certificate fingerprint as a field ($FP)"; else fail "the journal has the certificate fingerprint as a field"; fi
# The generated certificate's SHA-256 computed from the file, to compare with the log.
FILE_FP=$(sed -e '/-----/d' /var/lib/tunnelize/hub.crt | base64 -d | sha256sum | cut -c1-64 | tr a-f A-F | sed 's/../&:/g; s/:$//')
check "it is the fingerprint of /var/lib/tunnelize/hub.crt" sh -c "echo 'file $FILE_FP, log $FP'; [ '$FILE_FP' = '$FP' ]"
check "plain journalctl shows the fingerprint in the message" sh -c "journalctl -u $HUB -o cat --no-pager | grep -qF '$FP'"
check "the generated key is private to the daemon" mode_owner /var/lib/tunnelize/hub.key "600 tunnelize tunnelize"

echo "== tunnelizectl over the admin socket"
# alice operates the hub: group tunnelize-admin, as the README says to join; bob does not.
useradd --system --no-create-home --groups tunnelize-admin alice
useradd --system --no-create-home bob
check "hub.sock is 0660 tunnelize:tunnelize-admin" mode_owner /run/tunnelize/hub.sock "660 tunnelize tunnelize-admin"
sys_info() { as_alice tunnelizectl sys-info | tee /dev/stderr | grep -q "$(tunnelize --version | grep -o '[0-9][0-9.]*' | head -n 1)"; }
check "a member of group tunnelize-admin runs tunnelizectl sys-info (with the version)" sys_info
check "and tunnelizectl list-services (service ssh)" sh -c 'runuser -u alice -- tunnelizectl list-services | grep -w ssh'
check_not "a user outside the group cannot" runuser -u bob -- tunnelizectl sys-info
check_not "the operator cannot read the configuration or the keys" \
  sh -c "runuser -u alice -- cat $CONF/keys/demo.key || runuser -u alice -- cat $CONF/hub.toml"

echo "== systemctl reload"
# Every port below is chosen by the kernel and read back; only the hub's 7700, the packaged
# hub.toml's default, is checked as shipped (above), and even it is read from the hub's status
# (HUB_ADDR).
PID=$(prop $HUB MainPID)
cat >>$CONF/hub.toml <<'EOF'

# Added by the install test's reload.
[services.web]
kind = "http"
listen = "127.0.0.1:0"
domain = "tunnel.test"
EOF
C=$(cursor)
check "systemctl reload tunnelize-hub succeeds" systemctl reload $HUB
check "the new service is live after the reload" \
  poll 20 sh -c 'runuser -u alice -- tunnelizectl list-services | grep -qw web'
check "the same process keeps running" has_props $HUB MainPID="$PID" ActiveState=active SubState=running
journal_since "$C" -u $HUB -o cat >"$J"
check "the journal shows the reload and what it changed" contains 'reloaded: [0-9]* services (1 added'
# The port the kernel gave the new http service, as the hub reports it.
web_listen() {
  # Pretty-printed JSON: one line per object, then the object named web.
  runuser -u alice -- tunnelizectl --json list-services | tr -d '\n' | tr '{' '\n' |
    grep '"name": *"web"' | grep -o '"listen": *"[^"]*"' | cut -d'"' -f4
}
WEB=$(web_listen)
check "the hub reports where the new service listens ($WEB)" sh -c "case '$WEB' in 127.0.0.1:[1-9]*) ;; *) exit 1 ;; esac"
cp $CONF/hub.toml /tmp/hub.toml.good
echo 'this is not toml' >>$CONF/hub.toml
C=$(cursor)
check_not "systemctl reload with a broken file fails (ExecReload= waits for the answer)" systemctl reload $HUB
journal_since "$C" -u $HUB -o cat >"$J"
check "the journal says what is wrong, where" contains 'hub.toml:[0-9]'
check "while the hub keeps running" has_props $HUB MainPID="$PID" ActiveState=active SubState=running
check "and serving its services" sh -c 'runuser -u alice -- tunnelizectl list-services | grep -qw web'
# A file that parses but that the hub refuses: a new service on a port another process holds.
mkdir -p /srv/busy
systemd-run -q --unit=install-test-busy busybox httpd -f -p 127.0.0.1:0 -h /srv/busy
busy_port() { listen_port "$(prop install-test-busy MainPID)"; }
poll 20 busy_port >/dev/null 2>&1
cp /tmp/hub.toml.good $CONF/hub.toml
cat >>$CONF/hub.toml <<EOF

[services.clash]
kind = "http"
listen = "127.0.0.1:$(busy_port)"
domain = "clash.test"
EOF
C=$(cursor)
check_not "systemctl reload fails when the hub refuses the file" systemctl reload $HUB
journal_since "$C" -u $HUB -o cat >"$J"
check "the journal has the hub's reason" contains 'refused'
check "the hub keeps running" has_props $HUB MainPID="$PID" ActiveState=active SubState=running
systemctl stop install-test-busy
# systemd runs the stop half of a restart before any command of its start half, so no unit
# setting can keep the running hub up when the new file is broken (README: check-config
# first). What the unit can do: fail the restart at once, with the reason, and not loop.
echo 'this is not toml' >>$CONF/hub.toml
C=$(cursor)
check_not "systemctl restart with a broken file fails (and says so to the caller)" systemctl restart $HUB
check "the hub ends failed, exit status 78, with no restart scheduled" \
  has_props $HUB ActiveState=failed ExecMainStatus=78 NRestarts=0
check "systemctl status names the file and line" \
  sh -c "systemctl status --no-pager -n 20 $HUB | grep -E 'hub.toml:[0-9]+'"
cp /tmp/hub.toml.good $CONF/hub.toml
systemctl reset-failed $HUB 2>/dev/null
check "with the file fixed, systemctl start brings it back" systemctl start $HUB
# Its http service listens on port 0: the kernel picked a new one.
WEB=$(web_listen)

echo "== a tunnel@ instance without its file ends failed, not restarting"
check_not "systemctl start tunnelize-tunnel@nofile fails" systemctl start tunnelize-tunnel@nofile
check "it ends failed, exit status 78, with no restart scheduled" \
  has_props tunnelize-tunnel@nofile ActiveState=failed ExecMainStatus=78 NRestarts=0
check "systemctl status names the missing file" \
  sh -c "systemctl status --no-pager -n 20 tunnelize-tunnel@nofile | grep -F tunnel-nofile.toml"
systemctl reset-failed tunnelize-tunnel@nofile 2>/dev/null

echo "== tunnelize-tunnel@demo forwards through the hub"
mkdir -p /srv/www
BODY="hello from the install test $KEY"
echo "$BODY" >/srv/www/index.html
systemd-run -q --unit=install-test-target busybox httpd -f -p 127.0.0.1:0 -h /srv/www
target_port() { listen_port "$(prop install-test-target MainPID)"; }
poll 20 target_port >/dev/null 2>&1
TARGET=127.0.0.1:$(target_port)
check "a local target (busybox httpd) serves on a port of the kernel's choosing ($TARGET)" \
  poll 20 curl -fsS http://$TARGET/
cat >$CONF/tunnel-demo.toml <<EOF
# Written by the install test.
hub_address = "$HUB_ADDR"
hub_cert_sha256 = "$FP"
key_file = "/etc/tunnelize/keys/demo.key"

[admin]
socket_group = "tunnelize-admin"

[[proxies]]
name = "demo-tcp"
service = "ssh"
target = "$TARGET"

[[proxies]]
name = "demo-web"
service = "web"
target = "$TARGET"
hostname = "demo"
EOF
chgrp tunnelize $CONF/tunnel-demo.toml && chmod 0640 $CONF/tunnel-demo.toml
check "tunnelize check-config accepts tunnel-demo.toml" tunnelize check-config $CONF/tunnel-demo.toml
# A copy made by root is root:root 0640: the daemon, user tunnelize, may not read it.
cp $CONF/tunnel-demo.toml $CONF/tunnel-copied.toml
check "check-config, run as root, warns that the daemons' user may not read the copy" \
  sh -c "tunnelize check-config $CONF/tunnel-copied.toml 2>&1 | tee /dev/stderr |
    grep -F 'user tunnelize (group tunnelize), which the daemons run as, may not read this file'"
check_not "systemctl start tunnelize-tunnel@copied fails" systemctl start tunnelize-tunnel@copied
check "it ends failed with exit status 78" has_props tunnelize-tunnel@copied ActiveState=failed ExecMainStatus=78
check "systemctl status names the user it runs as and the fix" \
  sh -c "systemctl status --no-pager -l -n 20 tunnelize-tunnel@copied | tee /dev/stderr |
    grep -F 'runs as user tunnelize (group tunnelize)' | grep -qF 'chgrp tunnelize $CONF/tunnel-copied.toml'"
rm $CONF/tunnel-copied.toml
systemctl reset-failed tunnelize-tunnel@copied 2>/dev/null
C=$(cursor)
check "systemctl start tunnelize-tunnel@demo succeeds" systemctl start $TUNNEL
check "the tunnel is active (running), Type=notify" has_props $TUNNEL Type=notify ActiveState=active SubState=running
# The public port the hub gave demo-tcp (any free one of the ssh service), from the tunnel.
tcp_port() {
  runuser -u alice -- tunnelizectl --json status --socket /run/tunnelize/tunnel-demo.sock |
    tr -d '\n' | tr '{' '\n' | grep '"name": *"demo-tcp"' | grep -o '"public": *"[0-9]*"' |
    cut -d'"' -f4 | grep .
}
poll 30 tcp_port >/dev/null 2>&1
TCP_PORT=$(tcp_port)
check "a request through the hub's tcp port ${TCP_PORT:-?} reaches the target" \
  poll 30 sh -c "curl -fsS --max-time 5 http://127.0.0.1:$TCP_PORT/ | grep -qx '$BODY'"
check "a request to demo.tunnel.test on the hub's http service reaches it" \
  sh -c "curl -fsS --max-time 5 -H 'Host: demo.tunnel.test' http://$WEB/ | grep -qx '$BODY'"
check "tunnelizectl status on the instance's socket says connected" \
  sh -c 'runuser -u alice -- tunnelizectl status --socket /run/tunnelize/tunnel-demo.sock | tee /dev/stderr | grep -qi connected'
check "the hub lists the tunnel" sh -c "runuser -u alice -- tunnelizectl list-tunnels ssh | grep -qw '$TCP_PORT'"

echo "== ports survive a hub restart"
tunnel_session() {
  runuser -u alice -- tunnelizectl --json status --socket /run/tunnelize/tunnel-demo.sock |
    tr -d '\n' | grep -o '"tunnel_id": *"[^"]*"' | cut -d'"' -f4
}
OLD_SESSION=$(tunnel_session)
check "systemctl restart tunnelize-hub succeeds" systemctl restart $HUB
check "the restarted hub has read what the old one kept (state_dir/held.json) and removed it" \
  sh -c '! [ -e /var/lib/tunnelize/held.json ]'
back_with_its_port() {
  local session
  session=$(tunnel_session)
  [ -n "$session" ] && [ "$session" != "$OLD_SESSION" ] && [ "$(tcp_port)" = "$TCP_PORT" ]
}
check "the tunnel is back in a new session with the same public port ($TCP_PORT)" poll 60 back_with_its_port
check "and the port forwards" poll 20 curl -fsS http://127.0.0.1:$TCP_PORT/
journal_since "$C" -u $HUB -o cat >"$J"
check "the restarted hub says it held the tunnel's port and hostname" contains 'holding [0-9]* ports and [0-9]* hostnames'

echo "== structured journal entries"
journal_since "$C" -u $HUB -o json >"$J"
check "hub entries carry SYSLOG_IDENTIFIER=tunnelize, PRIORITY and CODE_FILE" \
  sh -c "grep '\"SYSLOG_IDENTIFIER\":\"tunnelize\"' $J | grep '\"PRIORITY\":' | grep -q '\"CODE_FILE\":'"
# The field names the README promises (tracing-journald would prefix them F_ by default).
for field in SERVICE TUNNEL_ID; do
  : >"$LOG"
  if grep -q "\"$field\":" "$J"; then
    pass "a hub entry has the field $field"
  else
    fail "a hub entry has the field $field (found: $(grep -o '"F_[A-Z_]*":' "$J" | sort -u | tr '\n' ' '))"
  fi
done
journal_since "$C" -u $TUNNEL -o json >"$J"
check "the tunnel's entries are in its own unit's journal" grep -q '"SYSLOG_IDENTIFIER":"tunnelize"' "$J"
# Plain lines (journalctl -o cat, syslog forwarding) carry the facts, not only the fields.
journal_since "$C" -u $HUB -o cat >"$J"
check "the hub's line for the tunnel names its peer and key" \
  contains 'tunnel connected from 127\.0\.0\.1:[0-9]* with key demo'
check "the hub's line for the tcp proxy names its address and port" \
  contains "serving tcp proxy demo-tcp on 0\.0\.0\.0:$TCP_PORT"
journal_since "$C" -u $TUNNEL -o cat >"$J"
check "the tunnel's line names the proxy and its public port" \
  contains "proxy is live on the hub: demo-tcp on port $TCP_PORT"
no_debug_values() { ! journalctl -q --no-pager -u $HUB -u $TUNNEL -o json | grep -E '":"(Some|Ok|Err)\('; }
check "no journal field holds Rust debug output (Some(...))" no_debug_values
# An operator's action is in the journal with who asked.
exec 3<>/dev/tcp/127.0.0.1/$TCP_PORT
client_id() {
  as_alice tunnelizectl --json list-clients ssh | tr -d '\n' | grep -o '"id": *"[0-9]*"' | head -n 1 | grep -o '[0-9][0-9]*'
}
poll 20 client_id >/dev/null
CLIENT=$(client_id)
C3=$(cursor)
check "alice disconnects client $CLIENT" as_alice tunnelizectl disconnect-client "$CLIENT"
exec 3<&-
journal_since "$C3" -u $HUB -o cat >"$J"
check "the journal says who asked: user alice on the admin socket" \
  contains "client $CLIENT disconnected at the request of user alice (uid $(id -u alice), pid [0-9]*) on the admin socket"
# A client the tunnel cannot serve (its target is down) is logged with the client's id.
systemctl stop install-test-target
C2=$(cursor)
curl -sS --max-time 10 http://127.0.0.1:$TCP_PORT/ >/dev/null 2>&1
client_logged() {
  journal_since "$C2" -u $HUB -o json >"$J"
  grep -q '"CLIENT_ID":' "$J"
}
if poll 20 client_logged; then
  pass "a failed client is logged with a CLIENT_ID field"
else
  journal_since "$C2" -u $HUB -u $TUNNEL -o json >"$LOG"
  fail "a failed client is logged with a CLIENT_ID field"
fi

echo "== systemctl stop is clean"
C=$(cursor)
# systemd logs "Main process exited" only for a failure or a signal, and "Deactivated
# successfully" when the unit ends with Result=success (an inactive unit may be unloaded at
# once, so `systemctl show` cannot tell afterwards).
exited_cleanly() {
  journal_since "$C" -u "$1" -o cat >"$J"
  contains 'Deactivated successfully' && ! grep 'Main process exited' "$J"
}
check "systemctl stop tunnelize-tunnel@demo succeeds" systemctl stop $TUNNEL
check "the tunnel exited 0 by itself" exited_cleanly $TUNNEL
check "systemctl stop tunnelize-hub succeeds" systemctl stop $HUB
check "the hub exited 0 by itself" exited_cleanly $HUB
journal_since "$C" -u $HUB -o cat >"$J"
check "the hub's journal shows the stop" sh -c "grep 'SIGTERM received; stopping' $J && grep 'hub stopped' $J"
journal_since "$C" -u $HUB -u $TUNNEL >"$J"
check_not "no SIGKILL, timeout or failure on stop" grep -E 'SIGKILL|timed out|Killing|Failed with result' "$J"
check "no tunnelize process is left" sh -c '! ps -u tunnelize -o pid,cmd --no-headers | grep .'
journalctl -b -q --no-pager -o cat >"$J"
check_not "systemd had no complaint about the units all along" \
  grep -E 'tunnelize.*(Unknown (key|section)|[Ii]gnoring|deprecated|[Ff]ailed to parse|mode is different)|mode is different' "$J"

echo "== upgrade keeps the edited configuration ($(basename "$UPGRADE"))"
echo "# edited before the upgrade" >>$CONF/hub.toml
SUM=$(sha256sum $CONF/hub.toml)
systemctl enable -q $HUB
systemctl start $HUB
OLD=$(prop $HUB MainPID)
check "apt-get installs the newer version over it" \
  apt-get install -y --no-install-recommends "$UPGRADE" </dev/null
check "dpkg has the new version" \
  sh -c "[ \"\$(dpkg-query -W -f '\${Version}' tunnelize)\" = \"$(dpkg-deb -f "$UPGRADE" Version)\" ]"
check "its changelog's first entry is that version" \
  sh -c "zcat /usr/share/doc/tunnelize/changelog.Debian.gz | head -n 1 | tee /dev/stderr |
    grep -qF \"tunnelize ($(dpkg-deb -f "$UPGRADE" Version))\""
check "hub.toml is the edited one, byte for byte" sh -c "echo '$SUM' | sha256sum -c"
check "with its mode and group" mode_owner $CONF/hub.toml "640 root tunnelize"
untouched() {
  mode_owner $CONF/tunnel-demo.toml "640 root tunnelize" && mode_owner $CONF/keys/demo.key "640 root tunnelize" &&
    grep -q "$FP" $CONF/tunnel-demo.toml
}
check "the keys and the instance's file are untouched" untouched
check "the hub stays enabled" sh -c "[ \"\$(systemctl is-enabled $HUB)\" = enabled ]"
restarted() {
  local pid
  pid=$(prop $HUB MainPID)
  echo "MainPID before $OLD, after $pid: $(readlink /proc/"$pid"/exe)"
  [ "$pid" != 0 ] && [ "$pid" != "$OLD" ] && systemctl is-active -q $HUB &&
    ! readlink /proc/"$pid"/exe | grep -q deleted
}
check "the running hub was restarted onto the new binary" restarted

echo "== purge removes the configuration"
check "apt-get purge tunnelize succeeds" apt-get purge -y tunnelize
check "the hub was stopped" sh -c "! systemctl is-active -q $HUB && ! ps -u tunnelize --no-headers"
check "/etc/tunnelize is gone" test ! -e $CONF
check "/var/lib/tunnelize is gone" test ! -e /var/lib/tunnelize
check "/run/tunnelize is gone" test ! -e /run/tunnelize
check "the units are gone" sh -c '! ls /usr/lib/systemd/system/tunnelize* 2>/dev/null'
check "no enablement symlink is left" sh -c '! find /etc/systemd/system -name "tunnelize*" | grep .'
check "dpkg has forgotten the package" sh -c "! dpkg-query -W -f '\${Status}' tunnelize 2>/dev/null | grep -q ."
if getent passwd tunnelize >/dev/null; then
  echo "INFO: the tunnelize system user stays after a purge (Debian practice: files it owned may remain)"
fi

echo "== the .rpm ($(basename "$RPM")): installed with rpm on the same systemd, then erased"
# As on a machine that never had the .deb: its account goes first, so %pre must make it.
userdel tunnelize 2>/dev/null
groupdel tunnelize-admin 2>/dev/null
groupdel tunnelize 2>/dev/null
# Fedora's preset policy (99-default-disable.preset), which %post applies on a first install.
mkdir -p /etc/systemd/system-preset
echo 'disable *' >/etc/systemd/system-preset/99-default-disable.preset
check "rpm -i installs it (--nodeps: this Debian's libraries are in no rpm database)" \
  rpm -i --nodeps "$RPM"
check "%pre made the account and both groups" \
  sh -c 'getent passwd tunnelize && getent group tunnelize && getent group tunnelize-admin'
# rpm -V compares each file's digest, mode, owner and group with the package: group
# tunnelize existed when the files were written. (--nodeps: see rpm -i.)
check "rpm -V finds every file as packaged" rpm -V --nodeps tunnelize
check "/etc/tunnelize is 0750 root:tunnelize" mode_owner $CONF "750 root tunnelize"
check "hub.toml is 0640 root:tunnelize" mode_owner $CONF/hub.toml "640 root tunnelize"
owned() {
  local dir
  for dir in $CONF /usr/share/doc/tunnelize /usr/share/licenses/tunnelize; do
    rpm -qf "$dir" || return 1
  done
}
check "rpm owns /etc/tunnelize and the doc and licence directories" owned
check "the licence is installed" sh -c "rpm -q --licensefiles tunnelize | grep -x /usr/share/licenses/tunnelize/LICENSE && grep -q 'MIT License' /usr/share/licenses/tunnelize/LICENSE"
check "it recommends ca-certificates" sh -c 'rpm -q --recommends tunnelize | grep -x ca-certificates'
check "the binaries run" sh -c 'tunnelize --version && tunnelizectl --version'
check "systemd knows the units (%post ran daemon-reload)" \
  sh -c 'systemctl cat tunnelize-hub.service tunnelize-tunnel@x.service >/dev/null'
check "/var/lib/tunnelize and /run/tunnelize are made (tmpfiles.d)" \
  sh -c 'mode_owner() { [ "$(stat -c "%a %U %G" "$1")" = "$2" ]; }
    mode_owner /var/lib/tunnelize "750 tunnelize tunnelize" && mode_owner /run/tunnelize "755 tunnelize tunnelize"'
check "nothing is started, and the preset policy leaves the hub disabled" \
  sh -c '! systemctl is-active -q tunnelize-hub; [ "$(systemctl is-enabled tunnelize-hub)" = disabled ]'
install -d -m 0750 -g tunnelize $CONF/keys
tunnelize gen-key $CONF/keys/demo.key >/dev/null
cat >>$CONF/hub.toml <<'TOML'

# Added by the install test.
[[keys]]
name = "demo"
key_file = "/etc/tunnelize/keys/demo.key"
TOML
check "the configured hub starts and is enabled" systemctl enable --now $HUB
check "a tunnel@ instance is enabled" systemctl enable $TUNNEL
check "rpm -e tunnelize succeeds" rpm -e tunnelize
check "the hub was stopped (%preun)" sh -c "! systemctl is-active -q $HUB && ! ps -u tunnelize --no-headers"
check "no enablement link is left, of the hub or of the tunnel@ instance (%preun)" \
  sh -c '! find /etc/systemd/system -name "tunnelize*" | grep .'
check "the units are gone, and systemd forgot them (%postun)" \
  sh -c '! ls /usr/lib/systemd/system/tunnelize* 2>/dev/null && ! systemctl cat tunnelize-hub.service 2>/dev/null'
check "the doc and licence directories are gone" \
  sh -c '! test -e /usr/share/doc/tunnelize && ! test -e /usr/share/licenses/tunnelize'
check "/run/tunnelize is gone" test ! -e /run/tunnelize
check "the edited hub.toml is kept as hub.toml.rpmsave, with the added keys" \
  sh -c "grep -q 'Added by the install test' $CONF/hub.toml.rpmsave && test -s $CONF/keys/demo.key"
check "rpm has forgotten the package" sh -c '! rpm -q tunnelize'
rm -rf $CONF
rm -f /etc/systemd/system-preset/99-default-disable.preset

echo "== $FAILS failed"
exit $FAILS
