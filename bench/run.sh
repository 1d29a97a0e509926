#!/usr/bin/env bash
# bench/run.sh: tunnelize against direct, rathole (plain TCP and TLS) and bore on loopback.
#
# One command, from a fresh clone: installs what it needs (apt: iperf3, wrk, nginx-light, ...;
# `cargo install` of rathole and bore-cli into bench/.cache/cargo), builds tunnelize and the
# load tools (benches/loadgen) in release mode, measures every system in the same invocation,
# prints a markdown table of medians and ratios on stdout (progress goes to stderr) and writes
# bench/results/<timestamp>.json (plus .md and the raw .tsv).
#
#   bench/run.sh                 3 rounds, medians (about 15-20 minutes once tools are built)
#   bench/run.sh --quick         1 round, shorter runs (about 5 minutes)
#   bench/run.sh --smoke         CI's check that the harness works (about 2 minutes): debug
#                                builds, direct + tunnelize, 1 s runs, 1,000 idle clients only;
#                                exits 1 if a figure of the table is missing. Not a benchmark.
#   bench/run.sh --soak [MIN]    tunnelize only: MIN minutes (default 30) of mixed load, sampling
#                                hub and tunnel RSS, fds, threads and tokio tasks every 30 s;
#                                prints a growth table and writes bench/results/<ts>-soak.*
#   options: --rounds N, --systems "direct tunnelize rathole rathole-tls bore",
#            --no-install (use what is on PATH), --keep (keep the work dir with every log)
#
# All traffic goes to 127.0.0.1. Every wait is bounded (loop counts, `timeout`), every process
# started here is stopped by its PID on exit. This measures; it asserts no timing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=$ROOT/bench/.cache
RESULTS=$ROOT/bench/results
ALL_SYSTEMS="direct tunnelize rathole rathole-tls bore"

ROUNDS=3 QUICK=0 SMOKE=0 INSTALL=1 KEEP=0 SYSTEMS=$ALL_SYSTEMS SOAK=0 SOAK_MINUTES=30
COMMAND_LINE="bench/run.sh $*"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1; ROUNDS=1 ;;
    --smoke) SMOKE=1; ROUNDS=1; SYSTEMS="direct tunnelize" ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
    --systems) SYSTEMS=${2:?--systems needs a list}; shift ;;
    --no-install) INSTALL=0 ;;
    --keep) KEEP=1 ;;
    --soak)
      SOAK=1
      case ${2:-} in ''|-*) ;; *) SOAK_MINUTES=$2; shift ;; esac ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case $ROUNDS in ''|*[!0-9]*|0) echo "run.sh: --rounds must be a positive number" >&2; exit 2 ;; esac
case $SOAK_MINUTES in ''|*[!0-9]*|0) echo "run.sh: --soak takes a positive number of minutes" >&2; exit 2 ;; esac

# HOLD_COUNTS: the idle-client runs (the report's rows are for 1,000 and 10,000).
HOLD_COUNTS="1000 10000"
if [ $SMOKE = 1 ]; then
  IPERF_SECS=1 WRK_SECS=1 LAT_SECS=1 CONN_SECS=1 HOLD_READY_SECS=30 HOLD_COUNTS=1000
elif [ $QUICK = 1 ]; then
  IPERF_SECS=2 WRK_SECS=3 LAT_SECS=2 CONN_SECS=2 HOLD_READY_SECS=20
else
  IPERF_SECS=5 WRK_SECS=5 LAT_SECS=5 CONN_SECS=5 HOLD_READY_SECS=30
fi
WRK_CONNS=64 LAT_RATE=1000 CONN_CONCURRENCY=32 HOLDER_MAX=5000 SLOW_COUNT=1000
# The slow-reader run (the latency client while SLOW_COUNT clients of another proxy read an
# endless download 16 B a second) is measured for these systems; the others' rows stay empty.
SLOWREAD_SYSTEMS="direct tunnelize"
# Idle means settled: tunnelize's daemons give back their start-up code 2 s after their first
# session (src/daemon/pages.rs). Every system waits this long after starting before its idle
# RSS, and before the base of each idle-client run, is sampled.
SETTLE_SECS=3
UDP_ARGS=(-u -b 1G -l 1400 -w 4M)
KEY=bench-key-$(date +%s)-$$-0123456789abcdef

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- processes we started
ALL_PIDS=()
WORK=""
SOAK_LANES=()
cleanup() {
  local pid
  for pid in "${SOAK_LANES[@]}" "${ALL_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${ALL_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ $KEEP = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_bg NAME CMD...: runs CMD in the background, logs in $WORK/logs/NAME.{out,err}.
start_bg() {
  local name=$1; shift
  "$@" >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err" </dev/null &
  LAST_PID=$!
  ALL_PIDS+=("$LAST_PID")
}

stop_pid() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

alive() { kill -0 "$1" 2>/dev/null; }

# wait_for_line FILE REGEX SECS [PID]: true once FILE has a line matching REGEX.
wait_for_line() {
  local file=$1 re=$2 secs=$3 pid=${4:-} i
  for i in $(seq $((secs * 20))); do
    grep -Eq "$re" "$file" 2>/dev/null && return 0
    if [ -n "$pid" ] && ! alive "$pid"; then return 1; fi
    sleep 0.05
  done
  return 1
}

wait_listening() {
  local port=$1 i
  for i in $(seq 100); do
    ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && return 0
    sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------- install and build
install_tools() {
  local missing=()
  command -v iperf3 >/dev/null || missing+=(iperf3)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v ss >/dev/null || missing+=(iproute2)
  command -v curl >/dev/null || missing+=(curl)
  # rathole's default build links OpenSSL (native-tls).
  dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  [ ${#missing[@]} = 0 ] && return 0
  log "installing with apt: ${missing[*]}"
  apt-get update -qq >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; then
    # nginx-light is not in every release; plain nginx serves a static file just as well.
    missing=("${missing[@]/nginx-light/nginx}")
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

NOTES=()
# install_baseline CRATE BIN: cargo install into bench/.cache/cargo; on failure, a note.
install_baseline() {
  local crate=$1 bin=$2
  [ -x "$CACHE/cargo/bin/$bin" ] && return 0
  log "cargo install $crate into bench/.cache/cargo (first run only)"
  mkdir -p "$CACHE"
  # --locked first (the versions its authors tested); an old lock file can pin a dependency
  # today's compiler rejects (rathole 0.5.0 pins `time` 0.3.29), so then resolve afresh.
  if ! CARGO_TARGET_DIR=$CACHE/cargo-target timeout 1800 \
      cargo install --locked --root "$CACHE/cargo" "$crate" >"$CACHE/install-$crate.log" 2>&1 \
    && ! CARGO_TARGET_DIR=$CACHE/cargo-target timeout 1800 \
      cargo install --root "$CACHE/cargo" "$crate" >>"$CACHE/install-$crate.log" 2>&1; then
    NOTES+=("$crate: \`cargo install $crate\` failed, baseline skipped (log: bench/.cache/install-$crate.log)")
    log "cargo install $crate failed; skipping that baseline"
  fi
}

build() {
  # The smoke run checks the harness, not speed: debug builds, which `cargo test` has made.
  local profile=release dir=release
  [ $SMOKE = 1 ] && profile=dev dir=debug
  log "building tunnelize ($profile) and benches/loadgen"
  (cd "$ROOT" && cargo build --profile "$profile" --bin tunnelize >&2)
  TUNNELIZE=$ROOT/target/$dir/tunnelize
  LOADGEN=$(cd "$ROOT" && cargo build --profile "$profile" --bench loadgen --message-format=json \
    | grep -o '"executable":"[^"]*/loadgen-[^"]*"' | tail -1 | cut -d'"' -f4)
  [ -x "$LOADGEN" ] || { echo "run.sh: could not build benches/loadgen" >&2; exit 1; }
}

# ---------------------------------------------------------------- measurements
RAW="" SYS="" ROUND=0 SYS_PIDS=()
record() { printf '%s\t%s\t%s\t%s\n' "$SYS" "$ROUND" "$1" "$2" >>"$RAW"; }
# record_lines PREFIX: records each `name value` line of stdin as PREFIX<name>.
record_lines() {
  local k v
  while read -r k v; do [ -n "$k" ] && record "$1$k" "$v"; done
}

rss_kib() {
  local pid sum=0 v
  for pid in "${SYS_PIDS[@]}"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# rss_part_kib FILE FIELD: the sum of FIELD (kB) in /proc/PID/FILE over the system's processes:
# status RssAnon (heap, stacks: what is the process's own) or smaps_rollup Pss (pages shared
# between processes, like those of one binary run twice, split between them).
rss_part_kib() {
  local file=$1 field=$2 pid sum=0 v
  for pid in "${SYS_PIDS[@]}"; do
    v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/$file" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# CPU seconds (user + system) of the system's processes so far.
cpu_secs() {
  local pid ticks=0 t
  for pid in "${SYS_PIDS[@]}"; do
    # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
    t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')
    ticks=$((ticks + ${t:-0}))
  done
  awk -v t="$ticks" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t / hz }'
}

# iperf_run NAME PORT IPERF3-CLIENT-ARGS...: one iperf3 client run against a fresh one-off
# server; records NAME_gbps (and bytes/CPU for TCP, loss for UDP).
iperf_run() {
  local name=$1 port=$2; shift 2
  local out=$WORK/logs/$SYS-r$ROUND-$name.json server cpu0 cpu1
  start_bg "iperf3-server-$SYS-$name" timeout $((IPERF_SECS + 40)) iperf3 -s -1 -B 127.0.0.1 -p "$T_IPERF"
  server=$LAST_PID
  if ! wait_listening "$T_IPERF"; then
    record "${name}_gbps" "NA:iperf3 server did not start"; stop_pid "$server"; return
  fi
  cpu0=$(cpu_secs)
  timeout $((IPERF_SECS + 30)) iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_SECS" \
    --connect-timeout 5000 -J "$@" >"$out" 2>&1 || true
  cpu1=$(cpu_secs)
  # The one-off server exits after its test; it is stopped if the test never reached it.
  timeout 5 tail --pid="$server" -f /dev/null 2>/dev/null || stop_pid "$server"
  wait "$server" 2>/dev/null || true
  local summary
  if ! summary=$("$LOADGEN" iperf-summary "$out" 2>&1); then
    log "  $name: ${summary//$'\n'/ }"
    record "${name}_gbps" "NA:iperf3 failed"; return
  fi
  while read -r k v; do
    case $k in
      gbps) record "${name}_gbps" "$v" ;;
      bytes) [ "${name#udp}" = "$name" ] && record "bytes_$name" "$v" ;;
      loss_pct) record "udp_loss_pct" "$v" ;;
    esac
  done <<<"$summary"
  if [ ${#SYS_PIDS[@]} -gt 0 ] && [ "${name#udp}" = "$name" ]; then
    record "cpu_s_$name" "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.3f", b - a }')"
  fi
  log "  $name: $(grep '^gbps' <<<"$summary" | cut -d' ' -f2) Gbit/s"
}

# wrk_run KEY PORT [HOST]: wrk keep-alive or (KEY *_close_*) a new connection per request.
wrk_run() {
  local key=$1 port=$2 host=${3:-} out=$WORK/logs/$SYS-r$ROUND-$1.txt args
  args=(-t2 -c"$WRK_CONNS" -d"${WRK_SECS}s" --timeout 5s)
  [ -n "$host" ] && args+=(-H "Host: $host")
  case $key in *close*) args+=(-H 'Connection: close') ;; esac
  timeout $((WRK_SECS + 30)) wrk "${args[@]}" "http://127.0.0.1:$port/1k.bin" >"$out" 2>&1 || true
  local rps errors non2xx
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  errors=$(awk '/Socket errors:/ {gsub(/[^0-9 ]/, " "); s = 0; for (i = 1; i <= NF; i++) s += $i; print s}' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
  if [ -z "$rps" ]; then record "$key" "NA:wrk failed"; log "  $key: wrk failed"; return; fi
  record "$key" "$rps"
  record "${key%_rps}_socket_errors" "${errors:-0}"
  record "${key%_rps}_non2xx" "${non2xx:-0}"
  log "  $key: $rps req/s (socket errors ${errors:-0}, non-2xx ${non2xx:-0})"
}

latency_run() {
  local out
  if out=$(timeout $((LAT_SECS * 3 + 20)) "$LOADGEN" latency --addr "127.0.0.1:$P_ECHO" \
      --rate "$LAT_RATE" --secs "$LAT_SECS" 2>&1); then
    record_lines lat_ <<<"$out"
    log "  latency: $(tr '\n' ' ' <<<"$out")"
  else
    record lat_p50_us "NA:latency client failed"; log "  latency failed: $out"
  fi
}

connrate_run() {
  local out
  if out=$(timeout $((CONN_SECS + 30)) "$LOADGEN" connect-rate --addr "127.0.0.1:$P_ECHO" \
      --secs "$CONN_SECS" --concurrency "$CONN_CONCURRENCY" 2>&1); then
    record_lines connrate_ <<<"$out"
    log "  new connections: $(tr '\n' ' ' <<<"$out")"
  else
    record connrate_conns_per_s "NA:connect-rate client failed"; log "  connect-rate failed: $out"
  fi
  sleep 1
}

# hold_run COUNT TAG: RSS of the system before and while COUNT idle clients are connected
# through it (split over holder processes of at most HOLDER_MAX connections each).
hold_run() {
  local count=$1 tag=$2 left=$1 i=0 pids=() files=() held=0 n f
  record "rss_base_${tag}_kib" "$(rss_kib)"
  while [ "$left" -gt 0 ]; do
    n=$((left < HOLDER_MAX ? left : HOLDER_MAX))
    start_bg "hold-$SYS-r$ROUND-$tag-$i" timeout $((HOLD_READY_SECS + 120)) "$LOADGEN" hold \
      --addr "127.0.0.1:$P_ECHO" --count "$n" --ready-timeout-secs "$HOLD_READY_SECS" --hold-secs 90
    pids+=("$LAST_PID"); files+=("$WORK/logs/hold-$SYS-r$ROUND-$tag-$i.out")
    left=$((left - n)); i=$((i + 1))
  done
  for f in "${files[@]}"; do
    wait_for_line "$f" '^ramp_secs' $((HOLD_READY_SECS + 15)) || true
    n=$(awk '/^established/ {print $2}' "$f"); held=$((held + ${n:-0}))
  done
  sleep 2
  local dead="" pid
  for pid in "${SYS_PIDS[@]}"; do alive "$pid" || dead="$dead $pid"; done
  if [ -n "$dead" ]; then
    # bore's server exits on EMFILE; say so rather than report the RSS of what is left.
    record "rss_${tag}_kib" "NA:a $SYS process exited (out of file descriptors?)"
    record "held_${tag}" "NA:a $SYS process exited"
    NOTES+=("$SYS, round $ROUND: a process exited while $count idle clients were being opened ($(grep -ho 'Too many open files' "$WORK"/logs/*"$SYS"*"$RUN_TAG".* 2>/dev/null | head -1 || true))")
    log "  $count idle clients: a $SYS process exited (pids$dead)"
  else
    record "rss_${tag}_kib" "$(rss_kib)"
    record "held_${tag}" "$held"
    log "  $count idle clients: $held held, RSS $(($(rss_kib) / 1024)) MiB"
  fi
  for n in "${pids[@]}"; do stop_pid "$n"; done
  sleep 2
}

# slow_run KIND TAG: RSS of the system before and while SLOW_COUNT HTTP clients of its http
# service have sent part of a request (KIND: loris, a head unfinished; body, a head and 100 B
# of a 1 MB body) and then nothing.
slow_run() {
  local kind=$1 tag=$2 f n
  # One request first: the code of the http path is then faulted in, not counted per client.
  curl -s -o /dev/null --max-time 10 -H "Host: bench.bench.test" "http://127.0.0.1:$P_HTTPSVC/" || true
  sleep 1
  record "rss_base_${tag}_kib" "$(rss_kib)"
  f="$WORK/logs/slow-$SYS-r$ROUND-$tag.out"
  start_bg "slow-$SYS-r$ROUND-$tag" timeout $((HOLD_READY_SECS + 120)) "$LOADGEN" slow \
    --addr "127.0.0.1:$P_HTTPSVC" --host bench.bench.test --kind "$kind" --count "$SLOW_COUNT" \
    --ready-timeout-secs "$HOLD_READY_SECS" --hold-secs 90
  wait_for_line "$f" '^ramp_secs' $((HOLD_READY_SECS + 15)) || true
  n=$(awk '/^established/ {print $2}' "$f")
  # The hub reads what they sent as it comes; two seconds is plenty on loopback.
  sleep 2
  record "rss_${tag}_kib" "$(rss_kib)"
  record "held_${tag}" "${n:-0}"
  log "  $SLOW_COUNT slow clients ($kind): ${n:-0} held, RSS $(($(rss_kib) / 1024)) MiB"
  stop_pid "$LAST_PID"
  sleep 1
}

# slowread_run: the latency client (as latency_run) on the echo proxy while SLOW_COUNT clients
# of the endless proxy read 16 B a second each (`loadgen slow-readers`: 4 KiB receive buffers,
# from 127.0.0.2-127.0.0.9, counted once they have their first byte); and the system's RSS
# before and while they read. The probe figures are n/a unless every reader was held.
slowread_run() {
  local f=$WORK/logs/slowread-$SYS-r$ROUND.out err=$WORK/logs/slowread-$SYS-r$ROUND.err
  local secs=$((HOLD_READY_SECS + LAT_SECS * 2 + 30)) deadline left fd pid n k v dropped
  [ ${#SYS_PIDS[@]} -gt 0 ] && record rss_base_slowread_kib "$(rss_kib)"
  # Its lines are read as they come, with blocking reads: wait_for_line's polling forks a grep
  # 20 times a second, and on this 2-core machine those forks showed in the probe's p99
  # (1.3-1.6 ms against 0.5-0.75 ms without them, in runs of the tool by hand).
  exec {fd}< <(exec timeout $((secs + 120)) "$LOADGEN" slow-readers \
    --addr "127.0.0.1:$P_ENDLESS" --probe "127.0.0.1:$P_ECHO" --count "$SLOW_COUNT" \
    --ready-timeout-secs "$HOLD_READY_SECS" --hold-secs 90 --rate "$LAT_RATE" --secs "$LAT_SECS" \
    2>"$err" </dev/null)
  pid=$!
  ALL_PIDS+=("$pid")
  : >"$f"
  deadline=$((SECONDS + secs))
  while left=$((deadline - SECONDS)) && [ "$left" -gt 0 ] && read -r -t "$left" -u "$fd" k v; do
    printf '%s %s\n' "$k" "$v" >>"$f"
    [ "$k" = dropped ] && break
  done
  if ! grep -q '^dropped' "$f"; then
    record slowread_probe_p50_us "NA:slow-readers did not finish"
    log "  slow readers: no result: $(tail -c 300 "$err" 2>/dev/null | tr '\n' ' ')"
    stop_pid "$pid"; exec {fd}<&-; return
  fi
  n=$(awk '/^established/ {print $2}' "$f")
  dropped=$(awk '/^dropped/ {print $2}' "$f")
  if [ ${#SYS_PIDS[@]} -gt 0 ]; then
    record rss_slowread_kib "$(rss_kib)"
    record held_slowread "${n:-0}"
  fi
  if [ "${n:-0}" -ge "$SLOW_COUNT" ]; then
    record_lines slowread_ <"$f"
  else
    grep -v '^probe_' "$f" | record_lines slowread_
    for k in p50_us p99_us failed; do
      record "slowread_probe_$k" "NA:only ${n:-0} of $SLOW_COUNT slow readers held"
    done
  fi
  [ "${dropped:-0}" = 0 ] || NOTES+=("$SYS, round $ROUND: $dropped of ${n:-0} slow readers lost their connection during the probe")
  log "  $SLOW_COUNT slow readers: ${n:-0} held; probe $(grep '^probe_' "$f" | tr '\n' ' ')${SYS_PIDS:+RSS $(($(rss_kib) / 1024)) MiB}"
  stop_pid "$pid"
  exec {fd}<&-
}

# ---------------------------------------------------------------- local targets
start_targets() {
  T_BASE=$("$LOADGEN" free-ports --count 4)
  T_IPERF=$T_BASE T_NGINX=$((T_BASE + 1)) T_ECHO=$((T_BASE + 2)) T_ENDLESS=$((T_BASE + 3))
  mkdir -p "$WORK/www" "$WORK/nginx"
  head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/www/1k.bin"
  chmod -R a+rX "$WORK"
  local user=""
  [ "$(id -u)" = 0 ] && user="user root;"
  cat >"$WORK/nginx/nginx.conf" <<EOF
$user
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/logs/nginx-error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  sendfile on;
  tcp_nodelay on;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  server {
    listen 127.0.0.1:$T_NGINX backlog=4096;
    root $WORK/www;
    location / { }
  }
}
EOF
  local nginx_bin
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
  start_bg nginx "$nginx_bin" -e "$WORK/logs/nginx-error.log" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx"
  start_bg echo "$LOADGEN" echo --listen "127.0.0.1:$T_ECHO" --max-secs 7200
  start_bg endless "$LOADGEN" endless --listen "127.0.0.1:$T_ENDLESS" --max-secs 7200
  wait_listening "$T_NGINX" || { echo "run.sh: nginx did not start (see $WORK/logs)" >&2; exit 1; }
  wait_listening "$T_ECHO" || { echo "run.sh: echo target did not start" >&2; exit 1; }
  wait_listening "$T_ENDLESS" || { echo "run.sh: endless target did not start" >&2; exit 1; }
  curl -fsS -o /dev/null "http://127.0.0.1:$T_NGINX/1k.bin" || { echo "run.sh: nginx does not serve 1k.bin" >&2; exit 1; }
}

make_certs() {
  local d=$WORK/certs
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
      -keyout ca.key -out ca.pem -subj "/CN=bench CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout server.key -out server.csr -subj "/CN=localhost"
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
      -extfile ext.cnf -out server.pem
    openssl pkcs12 -export -out identity.pfx -inkey server.key -in server.pem -certfile ca.pem \
      -passout pass:bench
  ) >"$WORK/logs/certs.log" 2>&1
}

# ---------------------------------------------------------------- systems under test
# Each start_* sets P_IPERF, P_HTTP, P_ECHO (public ports of the forwards to iperf3, nginx and
# the echo target), P_HTTPSVC, P_UDP and P_ENDLESS (the endless target, for the slow-reader run;
# empty when the system has none) and SYS_PIDS.

start_direct() {
  P_IPERF=$T_IPERF P_HTTP=$T_NGINX P_ECHO=$T_ECHO P_HTTPSVC=$T_NGINX P_UDP=$T_IPERF P_ENDLESS=$T_ENDLESS
  SYS_PIDS=()
}

# tunnelize's optional services, tried in this order until one set starts; the first round
# settles it for the run. "http" and "udp" services are being implemented in parallel.
TZ_FEATURE_SETS=("http udp" "http" "")
tz_configs() {
  local dir=$1 features=$2 base=$3
  cat >"$dir/hub.toml" <<EOF
listen = "127.0.0.1:$((base + 4))"
state_dir = "$dir/state"

# The load comes from one machine, mostly from 127.0.0.1 (10,000 idle clients, 1,000 slow
# ones): the per-address cap that guards a public hub would refuse it.
[limits]
connections_per_address = 100000

[[keys]]
name = "bench"
key = "$KEY"

[services.tcp]
kind = "tcp"
listen = "127.0.0.1"
ports = "$base-$((base + 2))"
EOF
  cat >"$dir/tunnel.toml.in" <<EOF
hub_address = "127.0.0.1:$((base + 4))"
hub_server_name = "localhost"
hub_cert_sha256 = "@FINGERPRINT@"
key = "$KEY"
links = 2

[[proxies]]
name = "iperf"
service = "tcp"
target = "127.0.0.1:$T_IPERF"
port = $base

[[proxies]]
name = "http"
service = "tcp"
target = "127.0.0.1:$T_NGINX"
port = $((base + 1))

[[proxies]]
name = "echo"
service = "tcp"
target = "127.0.0.1:$T_ECHO"
port = $((base + 2))
EOF
  case " $features " in *" http "*)
    # header_timeout: the slow-client run's slowloris clients must be held while measured.
    printf '\n[services.web]\nkind = "http"\nlisten = "127.0.0.1:%s"\ndomain = "bench.test"\nheader_timeout = "2m"\n' \
      $((base + 3)) >>"$dir/hub.toml"
    printf '\n[[proxies]]\nname = "web"\nservice = "web"\ntarget = "127.0.0.1:%s"\nhostname = "bench"\n' \
      "$T_NGINX" >>"$dir/tunnel.toml.in" ;;
  esac
  if [ "$TZ_ENDLESS" = 1 ]; then
    # The slow-reader run: the endless target behind a proxy of its own, on a port the OS picks.
    printf '\n[services.readers]\nkind = "tcp"\nlisten = "127.0.0.1"\nports = "0"\n' >>"$dir/hub.toml"
    printf '\n[[proxies]]\nname = "endless"\nservice = "readers"\ntarget = "127.0.0.1:%s"\n' \
      "$T_ENDLESS" >>"$dir/tunnel.toml.in"
  fi
  TZ_UDP_PORT=$base
  if [ $SOAK = 1 ]; then
    # The soak runs UDP alongside the TCP bursts, so UDP gets its own iperf3 server, whose
    # TCP control connection needs a tcp proxy of its own on the UDP port number; UDP
    # sessions expire within the quiet tail of a cycle; both daemons serve their admin socket.
    TZ_UDP_PORT=$((base + 5))
    printf '\n[services.tcp2]\nkind = "tcp"\nlisten = "127.0.0.1"\nports = "%s"\n' "$TZ_UDP_PORT" >>"$dir/hub.toml"
    printf '\n[[proxies]]\nname = "iperf-udp-control"\nservice = "tcp2"\ntarget = "127.0.0.1:%s"\nport = %s\n' \
      "$T_IPERF_UDP" "$TZ_UDP_PORT" >>"$dir/tunnel.toml.in"
    printf '\n[admin]\nsocket = "%s"\n' "$dir/hub.sock" >>"$dir/hub.toml"
    printf '\n[admin]\nsocket = "%s"\n' "$dir/tunnel.sock" >>"$dir/tunnel.toml.in"
  fi
  case " $features " in *" udp "*)
    printf '\n[services.udp]\nkind = "udp"\nlisten = "127.0.0.1"\nports = "%s"\n' "$TZ_UDP_PORT" >>"$dir/hub.toml"
    [ $SOAK = 1 ] && printf 'session_timeout = "5s"\n' >>"$dir/hub.toml"
    printf '\n[[proxies]]\nname = "iperf-udp"\nservice = "udp"\ntarget = "127.0.0.1:%s"\nport = %s\n' \
      "${T_IPERF_UDP:-$T_IPERF}" "$TZ_UDP_PORT" >>"$dir/tunnel.toml.in" ;;
  esac
}

# tz_try FEATURES: starts hub + tunnel with those optional services; false if they do not come up.
tz_try() {
  local features=$1 dir=$WORK/tunnelize-$RUN_TAG base hub tunnel fp
  rm -rf "$dir"; mkdir -p "$dir"
  base=$("$LOADGEN" free-ports --count 6)
  tz_configs "$dir" "$features" "$base"
  start_bg "tunnelize-hub-$RUN_TAG" "$TUNNELIZE" --log-format json hub -c "$dir/hub.toml"; hub=$LAST_PID
  SYS_PIDS=("$hub")
  if ! wait_for_line "$WORK/logs/tunnelize-hub-$RUN_TAG.err" 'hub listening for tunnels' 15 "$hub"; then
    log "  tunnelize hub did not start with services [$features]: $(tail -c 300 "$WORK/logs/tunnelize-hub-$RUN_TAG.err")"
    stop_pid "$hub"; return 1
  fi
  fp=$(grep 'hub listening for tunnels' "$WORK/logs/tunnelize-hub-$RUN_TAG.err" | grep -o '"fingerprint":"[^"]*"' | cut -d'"' -f4)
  sed "s/@FINGERPRINT@/$fp/" "$dir/tunnel.toml.in" >"$dir/tunnel.toml"
  # The tunnel runs from a copy of the executable, as on a host of its own: one file mapped by
  # both daemons would have its code pages counted in both RSS figures, and the start-up pages
  # a daemon gives back (src/daemon/pages.rs) are only those no other process maps.
  [ -x "$WORK/tunnelize-tunnel" ] || cp "$TUNNELIZE" "$WORK/tunnelize-tunnel"
  start_bg "tunnelize-tunnel-$RUN_TAG" "$WORK/tunnelize-tunnel" --log-format json tunnel -c "$dir/tunnel.toml"; tunnel=$LAST_PID
  SYS_PIDS=("$hub" "$tunnel")
  if ! wait_for_line "$WORK/logs/tunnelize-tunnel-$RUN_TAG.err" 'proxy is live.*"proxy":"echo"' 15 "$tunnel" \
      || ! "$LOADGEN" wait --addr "127.0.0.1:$((base + 2))" --timeout-secs 10 >/dev/null 2>&1; then
    log "  tunnelize did not come up with services [$features]: $(tail -c 300 "$WORK/logs/tunnelize-tunnel-$RUN_TAG.err")"
    stop_pid "$tunnel"; stop_pid "$hub"; return 1
  fi
  P_IPERF=$base P_HTTP=$((base + 1)) P_ECHO=$((base + 2)) P_HTTPSVC="" P_UDP=""
  if [ "$TZ_ENDLESS" = 1 ]; then
    local live=$WORK/logs/tunnelize-tunnel-$RUN_TAG.err
    if wait_for_line "$live" 'proxy is live.*"proxy":"endless"' 15 "$tunnel"; then
      P_ENDLESS=$(grep 'proxy is live.*"proxy":"endless"' "$live" | grep -o '"port":[0-9]*' | head -1 | cut -d: -f2)
    else
      log "  tunnelize's endless proxy did not come up: $(tail -c 300 "$live")"
    fi
  fi
  case " $features " in *" http "*)
    local i code=""
    for i in $(seq 20); do
      code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.bench.test' \
        "http://127.0.0.1:$((base + 3))/1k.bin" 2>/dev/null) && [ "$code" = 200 ] && break
      sleep 0.25
    done
    if [ "$code" = 200 ]; then P_HTTPSVC=$((base + 3)); else
      log "  tunnelize http service answered ${code:-nothing} for the bench host; http rows n/a"
    fi ;;
  esac
  case " $features " in *" udp "*) P_UDP=$TZ_UDP_PORT ;; esac
  return 0
}

start_tunnelize() {
  local set
  for set in "${TZ_FEATURE_SETS[@]}"; do
    if tz_try "$set"; then
      TZ_FEATURE_SETS=("$set")
      return 0
    fi
  done
  return 1
}

# start_rathole tcp|tls
start_rathole() {
  local mode=$1 dir=$WORK/rathole-$1-$RUN_TAG base ctrl server client svc name public target kind
  local rathole=$CACHE/cargo/bin/rathole
  rm -rf "$dir"; mkdir -p "$dir"
  base=$("$LOADGEN" free-ports --count 5); ctrl=$((base + 4))
  {
    printf '[server]\nbind_addr = "127.0.0.1:%s"\n[server.transport]\ntype = "%s"\n' "$ctrl" "$mode"
    [ "$mode" = tls ] && printf '[server.transport.tls]\npkcs12 = "%s"\npkcs12_password = "bench"\n' "$WORK/certs/identity.pfx"
  } >"$dir/server.toml"
  {
    printf '[client]\nremote_addr = "127.0.0.1:%s"\n[client.transport]\ntype = "%s"\n' "$ctrl" "$mode"
    [ "$mode" = tls ] && printf '[client.transport.tls]\ntrusted_root = "%s"\nhostname = "localhost"\n' "$WORK/certs/ca.pem"
  } >"$dir/client.toml"
  for svc in "iperf $base $T_IPERF tcp" "http $((base + 1)) $T_NGINX tcp" \
      "echo $((base + 2)) $T_ECHO tcp" "iperf_udp $base $T_IPERF udp"; do
    read -r name public target kind <<<"$svc"
    printf '[server.services.%s]\ntype = "%s"\ntoken = "%s"\nbind_addr = "127.0.0.1:%s"\n' "$name" "$kind" "$KEY" "$public" >>"$dir/server.toml"
    printf '[client.services.%s]\ntype = "%s"\ntoken = "%s"\nlocal_addr = "127.0.0.1:%s"\n' "$name" "$kind" "$KEY" "$target" >>"$dir/client.toml"
  done
  start_bg "rathole-$mode-server-$RUN_TAG" "$rathole" --server "$dir/server.toml"; server=$LAST_PID
  start_bg "rathole-$mode-client-$RUN_TAG" "$rathole" --client "$dir/client.toml"; client=$LAST_PID
  SYS_PIDS=("$server" "$client")
  P_IPERF=$base P_HTTP=$((base + 1)) P_ECHO=$((base + 2)) P_HTTPSVC="" P_UDP=$base
  "$LOADGEN" wait --addr "127.0.0.1:$P_ECHO" --timeout-secs 20 >/dev/null 2>&1
}

BORE_CONTROL_PORT=7835
start_bore() {
  local bore=$CACHE/cargo/bin/bore base pids i target
  if ss -Hltn "sport = :$BORE_CONTROL_PORT" | grep -q .; then
    log "  port $BORE_CONTROL_PORT (bore's fixed control port) is taken; bore skipped"; return 1
  fi
  base=$("$LOADGEN" free-ports --count 3)
  start_bg "bore-server-$RUN_TAG" "$bore" server --min-port "$base" --max-port $((base + 2)) --bind-addr 127.0.0.1
  pids=("$LAST_PID")
  wait_listening "$BORE_CONTROL_PORT" || { stop_pid "${pids[0]}"; return 1; }
  i=0
  for target in "$T_IPERF" "$T_NGINX" "$T_ECHO"; do
    start_bg "bore-local-$i-$RUN_TAG" "$bore" local "$target" --local-host 127.0.0.1 \
      --to 127.0.0.1 --port $((base + i))
    pids+=("$LAST_PID"); i=$((i + 1))
  done
  SYS_PIDS=("${pids[@]}")
  P_IPERF=$base P_HTTP=$((base + 1)) P_ECHO=$((base + 2)) P_HTTPSVC="" P_UDP=""
  "$LOADGEN" wait --addr "127.0.0.1:$P_ECHO" --timeout-secs 20 >/dev/null 2>&1
}

START_N=0 RUN_TAG="" TZ_ENDLESS=0
start_system() {
  START_N=$((START_N + 1))
  RUN_TAG=r$ROUND-$START_N
  P_ENDLESS=""
  case $SYS in
    direct) start_direct ;;
    tunnelize) start_tunnelize ;;
    rathole) start_rathole tcp ;;
    rathole-tls) start_rathole tls ;;
    bore) start_bore ;;
  esac
}

stop_system() {
  local pid
  for pid in "${SYS_PIDS[@]}"; do stop_pid "$pid"; done
  SYS_PIDS=()
  sleep 1
}

measure_system() {
  log "round $ROUND: $SYS"
  if ! start_system; then
    log "  $SYS did not start; skipped this round (logs in $WORK/logs)"
    NOTES+=("$SYS did not start in round $ROUND")
    stop_system; return
  fi
  sleep "$SETTLE_SECS"
  if [ ${#SYS_PIDS[@]} -gt 0 ]; then
    record rss_idle_kib "$(rss_kib)"
    record rss_idle_anon_kib "$(rss_part_kib status RssAnon)"
    record rss_idle_pss_kib "$(rss_part_kib smaps_rollup Pss)"
  fi
  latency_run
  connrate_run
  iperf_run tcp_1_up "$P_IPERF"
  iperf_run tcp_1_down "$P_IPERF" -R
  iperf_run tcp_8_up "$P_IPERF" -P 8
  iperf_run tcp_8_down "$P_IPERF" -P 8 -R
  if [ -n "$P_UDP" ]; then
    iperf_run udp "$P_UDP" "${UDP_ARGS[@]}"
  elif [ "$SYS" = tunnelize ]; then
    record udp_gbps "NA:not implemented yet"; record udp_loss_pct "NA:not implemented yet"
  else
    record udp_gbps "NA:no UDP"
  fi
  wrk_run http_ka_rps "$P_HTTP"
  wrk_run http_close_rps "$P_HTTP"
  if [ "$SYS" = direct ]; then
    # Direct has no proxy: the `http` service rows compare with nginx itself.
    local same
    same=$(grep -P "^direct\t$ROUND\thttp_(ka|close)_rps\t" "$RAW" | sed 's/\thttp_/\thttpsvc_/')
    [ -n "$same" ] && printf '%s\n' "$same" >>"$RAW"
  elif [ -n "$P_HTTPSVC" ]; then
    wrk_run httpsvc_ka_rps "$P_HTTPSVC" bench.bench.test
    wrk_run httpsvc_close_rps "$P_HTTPSVC" bench.bench.test
  elif [ "$SYS" = tunnelize ]; then
    record httpsvc_ka_rps "NA:not implemented yet"; record httpsvc_close_rps "NA:not implemented yet"
  fi
  if [ ${#SYS_PIDS[@]} -gt 0 ]; then
    sleep 1
    record rss_after_kib "$(rss_kib)"
  fi
  stop_system
  slowread_measure
  [ "$SYS" = direct ] && return
  # Idle clients on freshly started processes: memory kept from the traffic runs would hide
  # what each client costs.
  local count tag
  for count in $HOLD_COUNTS; do
    tag=$((count / 1000))k
    if start_system; then
      sleep "$SETTLE_SECS"
      hold_run "$count" "$tag"
    else
      log "  $SYS did not restart for the idle-client run"
    fi
    stop_system
  done
  # Slow HTTP clients, each kind on freshly started processes: tunnelize's http service only.
  [ "$SYS" = tunnelize ] || return 0
  local kind
  for kind in loris body; do
    tag=slow$kind
    if start_system && [ -n "$P_HTTPSVC" ]; then
      sleep "$SETTLE_SECS"
      slow_run "$kind" "$tag"
    else
      record "held_$tag" "NA:no http service"
      log "  $SYS has no http service for the slow-client run"
    fi
    stop_system
  done
}

# slowread_measure: the slow-reader run, on fresh processes that also forward the endless
# target (tunnelize: a proxy of the same tunnel as the echo one), for SLOWREAD_SYSTEMS.
slowread_measure() {
  case " $SLOWREAD_SYSTEMS " in *" $SYS "*) ;; *) return 0 ;; esac
  TZ_ENDLESS=1
  if start_system && [ -n "$P_ENDLESS" ]; then
    [ ${#SYS_PIDS[@]} -gt 0 ] && sleep "$SETTLE_SECS"
    slowread_run
  else
    record slowread_probe_p50_us "NA:no forward of the endless target"
    log "  $SYS has no forward of the endless target for the slow-reader run"
  fi
  TZ_ENDLESS=0
  stop_system
}

# ---------------------------------------------------------------- main
main() {
  local start_time=$SECONDS ts
  [ $SMOKE = 1 ] && NOTES+=("smoke run (--smoke): debug builds and 1 s runs, to check that the harness works; these figures say nothing of speed or memory")
  if [ $INSTALL = 1 ]; then
    install_tools
    case " $SYSTEMS " in *" rathole"*) install_baseline rathole rathole ;; esac
    case " $SYSTEMS " in *" bore "*) install_baseline bore-cli bore ;; esac
  fi
  build
  CLK_TCK=$(getconf CLK_TCK)
  WORK=$(mktemp -d /tmp/tunnelize-bench.XXXXXX)
  mkdir -p "$WORK/logs" "$RESULTS"
  ts=$(date -u +%Y%m%dT%H%M%SZ)
  RAW=$RESULTS/$ts.raw.tsv
  : >"$RAW"
  start_targets
  local run_systems=() s
  for s in $SYSTEMS; do
    case $s in
      direct|tunnelize) run_systems+=("$s") ;;
      rathole|rathole-tls)
        if [ -x "$CACHE/cargo/bin/rathole" ]; then run_systems+=("$s"); else NOTES+=("$s: rathole not installed, skipped"); fi ;;
      bore)
        if [ -x "$CACHE/cargo/bin/bore" ]; then run_systems+=("$s"); else NOTES+=("bore: not installed, skipped"); fi ;;
      *) echo "run.sh: unknown system $s (known: $ALL_SYSTEMS)" >&2; exit 2 ;;
    esac
  done
  case " ${run_systems[*]} " in *" rathole-tls "*)
    make_certs || { NOTES+=("rathole-tls: openssl could not make certificates, skipped"); run_systems=("${run_systems[@]/rathole-tls/}"); } ;;
  esac
  log "systems: ${run_systems[*]}; rounds: $ROUNDS; work dir $WORK"
  for ROUND in $(seq "$ROUNDS"); do
    for SYS in "${run_systems[@]}"; do
      [ -n "$SYS" ] && measure_system
    done
  done
  SYS=""
  write_meta "$RESULTS/$ts.meta.tsv" "${run_systems[*]}" $((SECONDS - start_time))
  local check=()
  # The smoke run fails when the table it printed lacks a figure of direct or tunnelize.
  [ $SMOKE = 1 ] && check=(--require "direct tunnelize" --allow-missing "rss_10k_mib per_client_10k_kib held_10k")
  local rc=0
  "$LOADGEN" report --raw "$RAW" --meta "$RESULTS/$ts.meta.tsv" --json-out "$RESULTS/$ts.json" \
    "${check[@]}" | tee "$RESULTS/$ts.md" || rc=$?  # pipefail: the report's status counts
  log "results: bench/results/$ts.json (.md, .raw.tsv); $((SECONDS - start_time)) s in all"
  if [ $rc != 0 ]; then
    log "smoke check failed (logs: --keep keeps the work dir)"; exit 1
  fi
}

version_of() { "$@" 2>&1 | head -1 | tr -d '\t' || true; }

write_meta() {
  local file=$1 systems=$2 secs=$3 rev note
  rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
  (cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null) || rev="$rev + uncommitted changes"
  {
    printf 'systems\t%s\n' "$systems"
    printf 'command\t%s\n' "$COMMAND_LINE"
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'rounds\t%s (medians)\n' "$ROUNDS"
    printf 'machine\t%s cores (%s), %s GiB, kernel %s\n' "$(nproc)" \
      "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
      "$(awk '/^MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)" "$(uname -r)"
    printf 'tunnelize\t%s (links = 2, TLS between hub and tunnel)\n' "$rev"
    [ -x "$CACHE/cargo/bin/rathole" ] && printf 'rathole\t%s\n' "$("$CACHE/cargo/bin/rathole" --version 2>/dev/null | awk '/Build Version/ {print $3}')"
    [ -x "$CACHE/cargo/bin/bore" ] && printf 'bore\t%s\n' "$(version_of "$CACHE/cargo/bin/bore" --version)"
    printf 'tools\t%s; %s; %s; %s\n' "$(version_of iperf3 --version)" "$(version_of wrk --version | cut -d' ' -f1-2)" \
      "$(version_of nginx -v)" "$(version_of rustc --version)"
    printf 'runs\tiperf3 %ss per run (UDP: %s); wrk -t2 -c%s %ss on a 1 KiB file (nginx, 1 worker); latency %s req/s x %ss on 1 conn; connect rate %ss with %s workers; idle clients held with 1 B echo each; slow readers: the latency run again while %s clients of an endless download (16 KiB send buffers) through another forward read 16 B/s each (4 KiB receive buffers, from 127.0.0.2-127.0.0.9)\n' \
      "$IPERF_SECS" "${UDP_ARGS[*]}" "$WRK_CONNS" "$WRK_SECS" "$LAT_RATE" "$LAT_SECS" "$CONN_SECS" "$CONN_CONCURRENCY" "$SLOW_COUNT"
    printf 'duration\t%s s\n' "$secs"
    for note in "${NOTES[@]}"; do printf 'note\t%s\n' "$note"; done
    printf 'note\t%s\n' "RSS is the sum of VmRSS of the system's processes (hub + tunnel; rathole server + client; bore server + its 3 \`bore local\` processes, one per port); tunnelize's tunnel runs from a copy of the executable, as on its own host."
    printf 'note\tCPU per GiB: utime + stime of those processes over the four iperf3 TCP runs, divided by the bytes iperf3 received.\n'
  } >"$file"
}

# ---------------------------------------------------------------- soak (--soak MINUTES)
# tunnelize only. Load runs in 30 s cycles, the same every cycle, so the samples taken in the
# quiet tail of each cycle are comparable:
#   +0 s   UDP iperf3 at SOAK_UDP_RATE and connection churn (loadgen churn) start, ~18 s each;
#   +0 s   TCP bursts: iperf3 -P 2 for 3 s up, then 3 s down (-R);
#   ~+8 s  wrk through the `http` service, 4 s keep-alive, then 4 s a new connection each;
#   ~+19 s quiet; UDP sessions expire (session_timeout 5s in the soak's config);
#   +28 s  sample hub and tunnel: VmRSS, /proc/PID/fd entries, Threads, tunnelize_tasks.
# Plus a sample before the load (start) and one 70 s after it (idle: past the UDP session and
# pooled upstream connection timeouts). Each load step is bounded by `timeout`.
SOAK_CYCLE_SECS=30 SOAK_SAMPLE_AT=28 SOAK_LEAD_SECS=2 SOAK_IDLE_WAIT=70
SOAK_UDP_RATE=20M SOAK_CHURN_RATE=100 SOAK_LANE_SECS=18 SOAK_WRK_CONNS=8
SOAK_SAMPLES="" SOAK_LOAD="" SOAK_T0_US=0 SOAK_DIR=""

now_us() { local t=${EPOCHREALTIME//[.,]/}; echo "$t"; }
# sleep_until_us T: sleeps until the clock (microseconds since the epoch) reaches T.
sleep_until_us() {
  local d=$(($1 - $(now_us)))
  [ "$d" -gt 0 ] && sleep "$((d / 1000000)).$(printf '%06d' $((d % 1000000)))"
  return 0
}
soak_t() { awk -v d=$(($(now_us) - SOAK_T0_US)) 'BEGIN { printf "%.1f", d / 1e6 }'; }

# soak_record CYCLE STEP KEY VALUE
soak_record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" >>"$SOAK_LOAD"; }

# soak_iperf CYCLE STEP SERVER-PORT CLIENT-PORT SECS IPERF3-ARGS...: one run against a fresh
# one-off server.
soak_iperf() {
  local c=$1 step=$2 sport=$3 cport=$4 secs=$5; shift 5
  local out=$WORK/logs/soak-c$c-$step.json server summary k v i
  timeout $((secs + 30)) iperf3 -s -1 -B 127.0.0.1 -p "$sport" \
    >"$WORK/logs/soak-c$c-$step-server.log" 2>&1 </dev/null &
  server=$!
  for i in $(seq 100); do
    ss -Hltn "sport = :$sport" 2>/dev/null | grep -q . && break
    sleep 0.05
  done
  timeout $((secs + 20)) iperf3 -c 127.0.0.1 -p "$cport" -t "$secs" --connect-timeout 5000 \
    -J "$@" >"$out" 2>&1 </dev/null || true
  timeout 5 tail --pid="$server" -f /dev/null 2>/dev/null || kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  if summary=$("$LOADGEN" iperf-summary "$out" 2>&1); then
    while read -r k v; do
      case $k in gbps|loss_pct) soak_record "$c" "$step" "$k" "$v" ;; esac
    done <<<"$summary"
  else
    soak_record "$c" "$step" error "${summary//$'\n'/ }"
  fi
}

# soak_wrk CYCLE STEP: wrk via the `http` service; STEP http_close sends Connection: close.
soak_wrk() {
  local c=$1 step=$2 out=$WORK/logs/soak-c$1-$2.txt args rps requests errors non2xx
  if [ -z "$P_HTTPSVC" ]; then soak_record "$c" "$step" error "no http service"; return; fi
  args=(-t1 -c"$SOAK_WRK_CONNS" -d4s --timeout 5s -H "Host: bench.bench.test")
  [ "$step" = http_close ] && args+=(-H 'Connection: close')
  timeout 40 wrk "${args[@]}" "http://127.0.0.1:$P_HTTPSVC/1k.bin" >"$out" 2>&1 </dev/null || true
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  requests=$(awk '/ requests in / {print $1}' "$out")
  errors=$(awk '/Socket errors:/ {gsub(/[^0-9 ]/, " "); s = 0; for (i = 1; i <= NF; i++) s += $i; print s}' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")
  if [ -z "$rps" ]; then soak_record "$c" "$step" error "wrk: $(tr '\n' ' ' <"$out" | tail -c 200)"; return; fi
  soak_record "$c" "$step" rps "$rps"
  soak_record "$c" "$step" requests "${requests:-0}"
  soak_record "$c" "$step" errors $((${errors:-0} + ${non2xx:-0}))
}

# soak_churn CYCLE: short-lived TCP clients through the echo proxy.
soak_churn() {
  local c=$1 out k v
  if out=$(timeout $((SOAK_LANE_SECS + 30)) "$LOADGEN" churn --addr "127.0.0.1:$P_ECHO" \
      --rate "$SOAK_CHURN_RATE" --secs "$SOAK_LANE_SECS" --max-open 256 --max-hold-ms 500 2>&1 </dev/null); then
    while read -r k v; do
      case $k in started|ok|failed|skipped) soak_record "$c" churn "$k" "$v" ;; esac
    done <<<"$out"
  else
    soak_record "$c" churn error "${out//$'\n'/ }"
  fi
}

# soak_sample PHASE: one line per daemon. /proc is read before the scrape, so the scrape's own
# connection is not counted in fds (it is in tasks, the same every time).
soak_sample() {
  local phase=$1 t name pid sock rss threads fds tasks line=""
  t=$(soak_t)
  for name in hub tunnel; do
    if [ $name = hub ]; then pid=${SYS_PIDS[0]}; else pid=${SYS_PIDS[1]}; fi
    sock=$SOAK_DIR/$name.sock
    rss=NA threads=NA fds=NA tasks=NA
    if alive "$pid"; then
      rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
      tasks=$(curl -s --max-time 5 --unix-socket "$sock" http://localhost/metrics 2>/dev/null \
        | awk '$1 == "tunnelize_tasks" {print $2}' || true)
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$phase" "$name" "${rss:-NA}" "${fds:-NA}" \
      "${threads:-NA}" "${tasks:-NA}" >>"$SOAK_SAMPLES"
    case ${rss:-NA} in *[!0-9]*|'') ;; *) rss="$((rss / 1024)) MiB" ;; esac
    line="$line | $name: RSS $rss, $fds fds, $threads threads, ${tasks:-NA} tasks"
  done
  log "  t=${t}s $phase$line"
}

soak_alive() { alive "${SYS_PIDS[0]}" && alive "${SYS_PIDS[1]}"; }

# soak_cycle N: one 30 s cycle of load and its sample.
soak_cycle() {
  local c=$1 start=$((SOAK_T0_US + (SOAK_LEAD_SECS + $1 * SOAK_CYCLE_SECS) * 1000000)) udp churn
  sleep_until_us "$start"
  SOAK_LANES=()
  if [ -n "$P_UDP" ]; then
    soak_iperf "$c" udp "$T_IPERF_UDP" "$P_UDP" "$SOAK_LANE_SECS" -u -b "$SOAK_UDP_RATE" -l 1200 &
    udp=$!; SOAK_LANES+=("$udp")
  else
    soak_record "$c" udp error "no udp service"
  fi
  soak_churn "$c" &
  churn=$!; SOAK_LANES+=("$churn")
  soak_iperf "$c" tcp_up "$T_IPERF" "$P_IPERF" 3 -P 2
  soak_iperf "$c" tcp_down "$T_IPERF" "$P_IPERF" 3 -P 2 -R
  soak_wrk "$c" http_ka
  soak_wrk "$c" http_close
  local pid
  for pid in "${SOAK_LANES[@]}"; do wait "$pid" 2>/dev/null || true; done
  SOAK_LANES=()
  if [ $(($(now_us) - start)) -gt $((SOAK_SAMPLE_AT * 1000000)) ]; then
    NOTES+=("cycle $c: the load ran past the sample time (+${SOAK_SAMPLE_AT} s); that sample was taken late")
  fi
  sleep_until_us $((start + SOAK_SAMPLE_AT * 1000000))
  soak_sample load
}

soak_main() {
  local start_time=$SECONDS ts cycles warmup c stem
  if [ $INSTALL = 1 ]; then install_tools; fi
  build
  WORK=$(mktemp -d /tmp/tunnelize-soak.XXXXXX)
  mkdir -p "$WORK/logs" "$RESULTS"
  ts=$(date -u +%Y%m%dT%H%M%SZ)
  stem=$RESULTS/$ts-soak
  SOAK_SAMPLES=$stem.samples.tsv SOAK_LOAD=$stem.load.tsv
  printf 't_secs\tphase\tprocess\trss_kib\tfds\tthreads\ttasks\n' >"$SOAK_SAMPLES"
  : >"$SOAK_LOAD"
  cycles=$((SOAK_MINUTES * 60 / SOAK_CYCLE_SECS))
  # Warm-up: a third of the run, at most 5 minutes (allocator arenas, pools, buffers settle).
  warmup=$((SOAK_MINUTES * 60 / 3)); [ $warmup -gt 300 ] && warmup=300
  start_targets
  T_IPERF_UDP=$("$LOADGEN" free-ports --count 1)
  SYS=tunnelize ROUND=1
  if ! start_system; then
    echo "run.sh: tunnelize did not start (logs in $WORK/logs; --keep keeps them)" >&2; exit 1
  fi
  SOAK_DIR=$WORK/tunnelize-$RUN_TAG
  [ "${TZ_FEATURE_SETS[0]}" = "http udp" ] \
    || NOTES+=("tunnelize started with services [${TZ_FEATURE_SETS[0]}] only; the missing load steps are counted as failed runs")
  local i
  for i in $(seq 50); do
    curl -sf --max-time 2 --unix-socket "$SOAK_DIR/hub.sock" http://localhost/healthz >/dev/null 2>&1 \
      && curl -sf --max-time 2 --unix-socket "$SOAK_DIR/tunnel.sock" http://localhost/healthz >/dev/null 2>&1 \
      && break
    sleep 0.2
  done
  log "soak: $SOAK_MINUTES min ($cycles cycles of $SOAK_CYCLE_SECS s), warm-up $warmup s; hub pid ${SYS_PIDS[0]}, tunnel pid ${SYS_PIDS[1]}; work dir $WORK"
  SOAK_T0_US=$(now_us)
  soak_sample start
  for c in $(seq 0 $((cycles - 1))); do
    if ! soak_alive; then
      NOTES+=("a tunnelize process exited during cycle $c; the soak stopped there (logs: --keep)")
      log "  a tunnelize process exited; stopping the soak"; break
    fi
    soak_cycle "$c"
  done
  if soak_alive; then
    log "  load stopped; idle sample in $SOAK_IDLE_WAIT s"
    sleep "$SOAK_IDLE_WAIT"
    soak_sample idle
  fi
  local name f errors warns first
  for name in hub tunnel; do
    f=$WORK/logs/tunnelize-$name-$RUN_TAG.err
    errors=$(grep -c '"level":"ERROR"' "$f" 2>/dev/null || true)
    warns=$(grep -c '"level":"WARN"' "$f" 2>/dev/null || true)
    first=$(grep -m1 -E '"level":"(ERROR|WARN)"' "$f" 2>/dev/null | cut -c1-240 || true)
    NOTES+=("$name log: ${errors:-0} ERROR and ${warns:-0} WARN lines${first:+; first: $first}")
  done
  soak_meta "$stem.meta.tsv" "$warmup" $((SECONDS - start_time))
  stop_system
  "$LOADGEN" soak-report --samples "$SOAK_SAMPLES" --load "$SOAK_LOAD" --meta "$stem.meta.tsv" \
    --warmup-secs "$warmup" --json-out "$stem.json" --csv-out "$stem.csv" | tee "$stem.md"
  log "results: bench/results/$ts-soak.json (.md, .csv, .samples.tsv, .load.tsv); $((SECONDS - start_time)) s in all"
}

soak_meta() {
  local file=$1 warmup=$2 secs=$3 rev note
  rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
  (cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null) || rev="$rev + uncommitted changes"
  {
    printf 'command\t%s\n' "$COMMAND_LINE"
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'machine\t%s cores (%s), %s GiB, kernel %s\n' "$(nproc)" \
      "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
      "$(awk '/^MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)" "$(uname -r)"
    printf 'tunnelize\t%s (links = 2, TLS between hub and tunnel; services: %s)\n' "$rev" "${TZ_FEATURE_SETS[0]}"
    printf 'soak\t%s min of load in %s s cycles, warm-up %s s, then %s s idle; %s s in all\n' \
      "$SOAK_MINUTES" "$SOAK_CYCLE_SECS" "$warmup" "$SOAK_IDLE_WAIT" "$secs"
    printf 'load per cycle\tiperf3 TCP -P 2 3 s up + 3 s down; iperf3 -u -b %s -l 1200 for %s s; wrk -t1 -c%s 4 s keep-alive + 4 s Connection: close on a 1 KiB file via the http service; loadgen churn %s conn/s for %s s (1-2048 B echo, held 0-500 ms, ending in turn clean / drop / reset / unread / silent)\n' \
      "$SOAK_UDP_RATE" "$SOAK_LANE_SECS" "$SOAK_WRK_CONNS" "$SOAK_CHURN_RATE" "$SOAK_LANE_SECS"
    printf 'load\t%s\n' "$(uptime | sed 's/.*load average/load average/') at the end (the machine is shared)"
    for note in "${NOTES[@]}"; do printf 'note\t%s\n' "$note"; done
  } >"$file"
}

if [ $SOAK = 1 ]; then soak_main; else main; fi
