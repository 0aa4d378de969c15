#!/usr/bin/env bash
# bench/run.sh: kustom-shim against stock Caddy and nginx, side by side, in
# one run, against one local TLS test upstream. See bench/README.md for the goals.
#
#   bash bench/run.sh
#
# Knobs (environment):
#   DURATION=10s     per throughput case and round
#   ROUNDS=3         interleaved rounds; medians are reported
#   WRK_THREADS=1    WRK_CONNS=64   (the same for every case)
#   WAN_CALLS=200    WAN_DELAY=20ms
#   STREAM_BYTES=1073741824
#   PROFILE=1        CPU profiles of stock Caddy and the shim under the same load
#   GOBENCH=1        the Go hot-path benchmarks
#   NICE=0           e.g. -10 (as root) to favour the benchmark over other work
#   KEEP=0           1: keep the temporary directory (configs, logs)
#
# Exits non-zero only when something could not be run (a build, a process
# that does not start, a proxy that answers wrongly); a missed goal is
# reported as MISS in the output and in bench/results/latest.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH=$ROOT/bench
BIN=$BENCH/.bin
RESULTS=$BENCH/results
mkdir -p "$BIN" "$RESULTS"

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WRK_THREADS=${WRK_THREADS:-1}
WRK_CONNS=${WRK_CONNS:-64}
WARMUP=${WARMUP:-2s}
WAN_CALLS=${WAN_CALLS:-200}
WAN_DELAY=${WAN_DELAY:-20ms}
STREAM_BYTES=${STREAM_BYTES:-1073741824}
PROFILE=${PROFILE:-1}
GOBENCH=${GOBENCH:-1}
NICE=${NICE:-0}
KEEP=${KEEP:-0}

# Credentials: the app's Klarna keys and the Kustom key the upstream expects.
KLARNA_USER=K123456_abcd12345
export KS_BENCH_KLARNA_PW=bench-klarna-password-0001
export KS_BENCH_KUSTOM_KEY=kco_test_api_bench-kustom-key-0002
KLARNA_AUTH="Basic $(printf '%s:%s' "$KLARNA_USER" "$KS_BENCH_KLARNA_PW" | base64 -w0)"
KUSTOM_AUTH="Basic $KS_BENCH_KUSTOM_KEY"
KUSTOM_HOST=api.kustom.co
ORDER_PATH=/checkout/v3/orders/0003a1b2-c3d4-e5f6-a7b8-c9d0e1f2a3b4

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "FAILED: $*"
	exit 1
}

# ---------------------------------------------------------------- tools ----
need() { # command, Debian package
	command -v "$1" >/dev/null 2>&1 && return
	log "installing $2 (for $1)"
	if [ "$(id -u)" = 0 ]; then
		for _ in 1 2 3 4 5 6; do
			DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null 2>&1 && break
			sleep 10 # apt may be locked by another process
		done
	fi
	command -v "$1" >/dev/null 2>&1 || die "$1 is missing: apt-get install -y $2"
}
need wrk wrk
need nginx nginx-light
need curl curl
need go golang-go
NGINX=$(command -v nginx)
RUN=(nice -n "$NICE")

WORK=$(mktemp -d /tmp/kustom-shim-bench.XXXXXX)
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building kustom-shim and the bench tools into bench/.bin"
go build -o "$BIN/kustom-shim" ./cmd/kustom-shim || die "go build ./cmd/kustom-shim"
go build -o "$BIN/" ./bench/upstream ./bench/delayrelay ./bench/legacyclient || die "go build ./bench/..."
SHIM=$BIN/kustom-shim

# ------------------------------------------------------------ processes ----
USED_PORTS=" "
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 30000))
		case "$USED_PORTS" in *" $p "*) continue ;; esac
		if ss -Htln 2>/dev/null | awk -v p=":$p" '$4 ~ p "$" { found = 1 } END { exit found }'; then
			USED_PORTS+="$p "
			echo "$p"
			return
		fi
	done
	die "no free port"
}

# start NAME CMD...: CMD in the background, output in $WORK/NAME.log; sets
# LAST_PID. Only processes started here are ever stopped, by their pid.
start() {
	local name=$1
	shift
	"${RUN[@]}" "$@" >"$WORK/$name.log" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

stop() { # pid
	local p keep=()
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

wait_port() { # port pid name
	for _ in $(seq 150); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return; fi
		kill -0 "$2" 2>/dev/null || {
			cat "$WORK/$3.log" >&2
			die "$3 exited"
		}
		sleep 0.1
	done
	cat "$WORK/$3.log" >&2
	die "$3 did not listen on $1"
}

# cpu_ticks PID: utime+stime of PID and its children (nginx's workers), in
# clock ticks.
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
cpu_ticks() {
	local root=$1 total=0 f line rest pid ppid a
	for f in /proc/[0-9]*/stat; do
		line=$(<"$f") || continue
		pid=${line%% *}
		rest=${line##*) } # from field 3 on: state ppid ...
		read -r -a a <<<"$rest"
		ppid=${a[1]}
		if [ "$pid" = "$root" ] || [ "$ppid" = "$root" ]; then
			total=$((total + a[11] + a[12])) # utime, stime (fields 14, 15)
		fi
	done 2>/dev/null
	echo "$total"
}
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; } # all CPUs, not idle/iowait

calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
kv() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p;T;q" <<<"$2"; } # kv KEY LINE
ratio() { awk -v v="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", v / b; else printf "n/a" }'; }
pass() { if awk "BEGIN { exit !($1) }"; then echo PASS; else echo MISS; fi; }

# ------------------------------------------------------------- upstream ----
UP_PORT=$(free_port)
UP=127.0.0.1:$UP_PORT
CA=$WORK/ca.pem
SITE_CRT=$WORK/site.crt
SITE_KEY=$WORK/site.key
start upstream "$BIN/upstream" -addr "$UP" -ca-out "$CA" -site-cert-out "$SITE_CRT" -site-key-out "$SITE_KEY" \
	-expect-host "$KUSTOM_HOST" -expect-auth "$KUSTOM_AUTH"
UP_PID=$LAST_PID
wait_port "$UP_PORT" "$UP_PID" upstream
log "upstream on $UP (pid $UP_PID)"

export XDG_DATA_HOME=$WORK/xdg/data XDG_CONFIG_HOME=$WORK/xdg/config

# ------------------------------------------------------------- configs ----
indent() { sed "s/^/$(printf '\t%.0s' $(seq "$1"))/"; }

caddy_globals() { # name admin-address [extra global option]
	echo "{"
	printf '\tadmin %s\n\tpersist_config off\n\tstorage file_system %s\n\tskip_install_trust\n\tauto_https disable_redirects\n' \
		"$2" "$WORK/$1.storage"
	printf '\tlog default {\n\t\toutput file %s\n\t\tlevel WARN\n\t}\n' "$WORK/$1.caddy.log"
	[ -z "${3:-}" ] || printf '\t%s\n' "$3"
	echo "}"
}

# Stock Caddy: what a user writes without kustom-shim (the same binary, only
# standard directives). It checks no credentials: it overwrites
# Authorization with the Kustom key for whoever reaches it.
write_stock() { # name port upstream admin [extra global option]
	{
		caddy_globals "$1" "$4" "${5:-}"
		cat <<EOF
http://127.0.0.1:$2 {
	reverse_proxy https://$3 {
		header_up Host $KUSTOM_HOST
		header_up Authorization "Basic {\$KS_BENCH_KUSTOM_KEY}"
		transport http {
			tls_server_name $KUSTOM_HOST
			tls_trust_pool file $CA
		}
	}
}
EOF
	} >"$WORK/$1.caddyfile"
}

# The kustom directive: ten stores' credentials, the load uses one of them.
shim_block() { # upstream
	printf 'kustom {\n\tupstream https://%s\n\ttransport http {\n\t\ttls_trust_pool file %s\n\t}\n' "$1" "$CA"
	local i user
	for i in $(seq 0 9); do
		user=K10000${i}_store$i
		[ "$i" != 5 ] || user=$KLARNA_USER
		printf '\tcredential shop%s {\n\t\tklarna_username %s\n' "$i" "$user"
		printf '\t\tklarna_password {env.KS_BENCH_KLARNA_PW}\n\t\tkustom_api_key {env.KS_BENCH_KUSTOM_KEY}\n\t}\n'
	done
	echo "}"
}

# kustom-shim as a sidecar with a credential swap. Its metrics are always
# recorded; they are served by Caddy's metrics handler on a site of their
# own (a scrape port), so that the API site's route is the kustom directive
# alone, as stock Caddy's is reverse_proxy alone.
write_shim() { # name port metrics-port upstream admin [extra global option]
	{
		# With kustom_drain on its listener, as Caddyfile.example has it.
		caddy_globals "$1" "$5" "$(printf 'servers {\n\t\tlistener_wrappers {\n\t\t\tkustom_drain\n\t\t}\n\t}')${6:+
	$6}"
		echo "http://127.0.0.1:$2 {"
		shim_block "$4" | indent 1
		echo "}"
		printf 'http://127.0.0.1:%s {\n\tmetrics\n}\n' "$3"
	} >"$WORK/$1.caddyfile"
}

write_nginx() { # name port upstream
	local d=$WORK/$1
	mkdir -p "$d/logs" "$d/tmp"
	chmod 777 "$d/tmp"
	cat >"$d/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $d/tmp/body;
	proxy_temp_path $d/tmp/proxy;
	fastcgi_temp_path $d/tmp/fastcgi;
	uwsgi_temp_path $d/tmp/uwsgi;
	scgi_temp_path $d/tmp/scgi;
	upstream kustom {
		server $3;
		keepalive 64;
	}
	server {
		listen 127.0.0.1:$2;
		location / {
			proxy_pass https://kustom;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host $KUSTOM_HOST;
			proxy_set_header Authorization "$KUSTOM_AUTH";
			proxy_ssl_server_name on;
			proxy_ssl_name $KUSTOM_HOST;
			proxy_ssl_verify on;
			proxy_ssl_trusted_certificate $CA;
			proxy_ssl_session_reuse on;
		}
	}
}
EOF
}

start_caddy() { # name port
	start "$1" "$SHIM" run --config "$WORK/$1.caddyfile" --adapter caddyfile
	wait_port "$2" "$LAST_PID" "$1"
}

# check_proxy NAME BASE-URL: a read and a create must get through with the
# right answers (the upstream refuses a wrong Host or Authorization) before
# anything is measured.
check_proxy() {
	local name=$1 base=$2 code
	code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $KLARNA_AUTH" "$base$ORDER_PATH") || true
	[ "$code" = 200 ] || die "$name: GET answered $code (want 200; see $WORK/$name*.log)"
	code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $KLARNA_AUTH" -H 'Content-Type: application/json' \
		--data '{"order_amount":1}' "$base/checkout/v3/orders") || true
	[ "$code" = 201 ] || die "$name: POST answered $code (want 201)"
}

# ----------------------------------------------------------- throughput ----
CASES=(direct caddy caddy_metrics nginx shim shim_caddy_metrics)
declare -A LABEL=(
	[direct]="direct to the test upstream (the limit)"
	[caddy]="**stock Caddy** reverse_proxy + header_up Host/Authorization"
	[caddy_metrics]="stock Caddy + global \`metrics\`"
	[nginx]="nginx proxy_pass, upstream keepalive 64"
	[shim]="**kustom-shim**: credential swap + its metrics"
	[shim_caddy_metrics]="kustom-shim + global \`metrics\`"
)
declare -A PORT PID
for c in caddy caddy_metrics nginx shim shim_caddy_metrics; do PORT[$c]=$(free_port); done
CADDY_ADMIN=127.0.0.1:$(free_port)
SHIM_ADMIN=127.0.0.1:$(free_port)
SHIM_METRICS=$(free_port)

write_stock caddy "${PORT[caddy]}" "$UP" "$CADDY_ADMIN"
write_stock caddy_metrics "${PORT[caddy_metrics]}" "$UP" off metrics
write_shim shim "${PORT[shim]}" "$SHIM_METRICS" "$UP" "$SHIM_ADMIN"
write_shim shim_caddy_metrics "${PORT[shim_caddy_metrics]}" "$(free_port)" "$UP" off metrics
write_nginx nginx "${PORT[nginx]}" "$UP"
NGINX_ARGS=(-p "$WORK/nginx" -e "$WORK/nginx/logs/error.log" -c "$WORK/nginx/nginx.conf")
"$NGINX" -t -q "${NGINX_ARGS[@]}" 2>"$WORK/nginx-t.log" || {
	cat "$WORK/nginx-t.log" >&2
	die "nginx -t"
}

for c in caddy caddy_metrics shim shim_caddy_metrics; do
	start_caddy "$c" "${PORT[$c]}"
	PID[$c]=$LAST_PID
done
start nginx "$NGINX" "${NGINX_ARGS[@]}"
PID[nginx]=$LAST_PID
wait_port "${PORT[nginx]}" "${PID[nginx]}" nginx
PID[direct]=""

for c in caddy caddy_metrics nginx shim shim_caddy_metrics; do
	check_proxy "$c" "http://127.0.0.1:${PORT[$c]}"
done
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" --resolve "$KUSTOM_HOST:$UP_PORT:127.0.0.1" \
	-H "Host: $KUSTOM_HOST" -H "Authorization: $KUSTOM_AUTH" "https://$KUSTOM_HOST:$UP_PORT$ORDER_PATH") || true
[ "$code" = 200 ] || die "direct: GET answered $code"
# The shim checks the caller's Klarna password (the others cannot).
code=$(curl -s -o /dev/null -w '%{http_code}' -u "$KLARNA_USER:wrong" "http://127.0.0.1:${PORT[shim]}$ORDER_PATH") || true
[ "$code" = 401 ] || die "shim: a wrong password answered $code, want 401"

# wrk_cmd CASE DURATION CONNS OUT: runs wrk for one case; OUT gets wrk's
# output, its BENCH line and a WRKCPU line (wrk's own CPU ticks).
wrk_cmd() {
	local c=$1 url auth host=""
	if [ "$c" = direct ]; then
		url="https://$UP" auth=$KUSTOM_AUTH host=$KUSTOM_HOST
	else
		url="http://127.0.0.1:${PORT[$c]}" auth=$KLARNA_AUTH
	fi
	BENCH_AUTH=$auth BENCH_HOST=$host "${RUN[@]}" bash -c '
		wrk "$@" || exit 1
		read -r -a s </proc/$$/stat
		echo "WRKCPU ticks=$((s[15] + s[16]))"' wrk \
		-t"$WRK_THREADS" -c"$3" -d"$2" --timeout 5s -s "$BENCH/wrk.lua" "$url" >"$4" 2>&1 || {
		cat "$4" >&2
		die "wrk $c"
	}
	grep -q '^BENCH ' "$4" || {
		cat "$4" >&2
		die "wrk $c: no result"
	}
}

# check_errors CASE LINE: any error means a broken setup, not a slow one.
check_errors() {
	local errs=0 e
	for e in connect read write status timeout; do errs=$((errs + $(kv "err_$e" "$2"))); done
	[ "$(kv requests "$2")" -gt 0 ] || die "$1: no requests completed"
	[ "$errs" = 0 ] || die "$1: $errs errors (non-2xx or socket): $2"
}

declare -A R # R[case:metric] = one value per round, space-separated
log "throughput: ${#CASES[@]} cases x $ROUNDS rounds x $DURATION (wrk -t$WRK_THREADS -c$WRK_CONNS, warm-up $WARMUP each)"
for c in "${CASES[@]}"; do wrk_cmd "$c" "$WARMUP" "$WRK_CONNS" "$WORK/warmup.out"; done
for round in $(seq "$ROUNDS"); do
	for c in "${CASES[@]}"; do
		p0=0 p1=0
		[ -z "${PID[$c]}" ] || p0=$(cpu_ticks "${PID[$c]}")
		u0=$(cpu_ticks "$UP_PID") b0=$(busy_ticks) t0=$(date +%s.%N)
		wrk_cmd "$c" "$DURATION" "$WRK_CONNS" "$WORK/wrk-$c.out"
		u1=$(cpu_ticks "$UP_PID") b1=$(busy_ticks) t1=$(date +%s.%N)
		[ -z "${PID[$c]}" ] || p1=$(cpu_ticks "${PID[$c]}")
		line=$(grep '^BENCH ' "$WORK/wrk-$c.out")
		w=$(kv ticks "$(grep '^WRKCPU ' "$WORK/wrk-$c.out")")
		check_errors "$c" "$line"
		n=$(kv requests "$line")
		R[$c:rps]+="$(kv rps "$line") "
		R[$c:p50]+="$(calc "$(kv p50_us "$line")/1000" 3) "
		R[$c:p99]+="$(calc "$(kv p99_us "$line")/1000" 3) "
		R[$c:up_cpu]+="$(calc "($u1-$u0)*1000000/$CLK_TCK/$n" 1) "
		[ -z "${PID[$c]}" ] || R[$c:cpu]+="$(calc "($p1-$p0)*1000000/$CLK_TCK/$n" 1) "
		# CPU used by anything but this benchmark during the run, in % of the
		# machine: other people's builds and tests skew every number.
		R[$c:other]+="$(calc "(($b1-$b0)-($p1-$p0)-($u1-$u0)-$w)*100/$CLK_TCK/($t1-$t0)/$NCPU" 0) "
		log "  round $round $c: $(kv rps "$line") req/s, p50 $(kv p50_us "$line") us, p99 $(kv p99_us "$line") us"
	done
done

# The shim really counted: requests_total covers every request it was sent.
SHIM_COUNTED=$(curl -s "http://127.0.0.1:$SHIM_METRICS/metrics" |
	awk '/^kustom_shim_requests_total\{/ { s += $NF } END { printf "%d", s }')
[ "${SHIM_COUNTED:-0}" -gt 0 ] || die "shim: kustom_shim_requests_total not found on /metrics"

# -------------------------------------------------------- paired A/B ----
# Stock Caddy and kustom-shim under load at the same time, each with its own
# wrk: both see the same machine at the same moment, so load from outside
# the benchmark cancels out of the ratios.
log "paired: stock Caddy and kustom-shim loaded at once, $ROUNDS x $DURATION"
# mallocs ADMIN: the process's heap allocations so far (Go's runtime metrics
# on the admin endpoint).
mallocs() { curl -sf "http://$1/metrics" | awk '/^go_memstats_mallocs_total / { printf "%d", $2 }'; }
paired() { # duration -> sets PA/PB (caddy/shim BENCH line), PCA/PCB (CPU ticks), PMA/PMB (allocations)
	local a0 b0 wa wb ma0 mb0
	ma0=$(mallocs "$CADDY_ADMIN") mb0=$(mallocs "$SHIM_ADMIN")
	a0=$(cpu_ticks "${PID[caddy]}") b0=$(cpu_ticks "${PID[shim]}")
	wrk_cmd caddy "$1" "$WRK_CONNS" "$WORK/pair-caddy.out" &
	wa=$!
	wrk_cmd shim "$1" "$WRK_CONNS" "$WORK/pair-shim.out" &
	wb=$!
	if [ -n "${2:-}" ]; then
		sleep 2
		curl -sf -o "$RESULTS/caddy-cpu.pprof" "http://$CADDY_ADMIN/debug/pprof/profile?seconds=$2" &
		curl -sf -o "$RESULTS/shim-cpu.pprof" "http://$SHIM_ADMIN/debug/pprof/profile?seconds=$2" || true
		wait $! || true
	fi
	wait "$wa" || die "paired wrk (caddy)"
	wait "$wb" || die "paired wrk (shim)"
	PCA=$(($(cpu_ticks "${PID[caddy]}") - a0)) PCB=$(($(cpu_ticks "${PID[shim]}") - b0))
	PMA=$(($(mallocs "$CADDY_ADMIN") - ma0)) PMB=$(($(mallocs "$SHIM_ADMIN") - mb0))
	PA=$(grep '^BENCH ' "$WORK/pair-caddy.out") PB=$(grep '^BENCH ' "$WORK/pair-shim.out")
	check_errors "paired caddy" "$PA"
	check_errors "paired shim" "$PB"
}
for round in $(seq "$ROUNDS"); do
	paired "$DURATION"
	na=$(kv requests "$PA") nb=$(kv requests "$PB")
	R[pair:caddy_rps]+="$(kv rps "$PA") "
	R[pair:shim_rps]+="$(kv rps "$PB") "
	R[pair:caddy_cpu]+="$(calc "$PCA*1000000/$CLK_TCK/$na" 1) "
	R[pair:shim_cpu]+="$(calc "$PCB*1000000/$CLK_TCK/$nb" 1) "
	R[pair:rps_ratio]+="$(ratio "$nb" "$na") "
	R[pair:caddy_allocs]+="$(calc "$PMA/$na" 1) "
	R[pair:shim_allocs]+="$(calc "$PMB/$nb" 1) "
	R[pair:allocs_ratio]+="$(awk -v a="$PMA" -v b="$PMB" -v na="$na" -v nb="$nb" 'BEGIN { printf "%.3f", (b / nb) / (a / na) }') "
	R[pair:cpu_ratio]+="$(awk -v a="$PCA" -v b="$PCB" -v na="$na" -v nb="$nb" 'BEGIN { printf "%.3f", (b / nb) / (a / na) }') "
	log "  round $round: caddy $(kv rps "$PA") req/s, shim $(kv rps "$PB") req/s"
done

# --------------------------------------------------------------- profile ----
PROFILE_MD=$WORK/profile.md
: >"$PROFILE_MD"
if [ "$PROFILE" = 1 ]; then
	log "profile: stock Caddy and kustom-shim, 10 s each, under the paired load"
	rm -f "$RESULTS/caddy-cpu.pprof" "$RESULTS/shim-cpu.pprof"
	paired 13s 10
	if [ -s "$RESULTS/caddy-cpu.pprof" ] && [ -s "$RESULTS/shim-cpu.pprof" ]; then
		# Requests in the 10 s window, from each wrk's rate.
		qa=$(calc "$(kv rps "$PA")*10" 0) qb=$(calc "$(kv rps "$PB")*10" 0)
		cum() { go tool pprof -top -cum -nodecount=100000 "$SHIM" "$1" 2>/dev/null | sed -n '/flat%/,$p' | tail -n +2; }
		own() {
			go tool pprof -top -cum -nodecount=18 -focus='kustomshim/module\.\(\*Handler\)\.ServeHTTP' \
				-ignore='reverseproxy\.\(\*Handler\)\.ServeHTTP' "$SHIM" "$RESULTS/shim-cpu.pprof" 2>/dev/null
		}
		{
			echo "Profiles: bench/results/caddy-cpu.pprof, bench/results/shim-cpu.pprof (\`go tool pprof bench/.bin/kustom-shim …\`)."
			echo
			echo "kustom-shim's own code, outside Caddy's reverse proxy (module.Handler.ServeHTTP minus reverseproxy.Handler.ServeHTTP):"
			echo "$(own | awk '/module\.\(\*Handler\)\.ServeHTTP$/ { print $5; exit }') of the shim's CPU samples."
			echo
			echo '```'
			own | sed -n '/flat%/,$p' | awk '!/caddyhttp\.|net\/http\.\(\*conn\)|serverHandler/' | cut -c1-150
			echo '```'
			echo
			echo "Where the shim spends more CPU per request than stock Caddy (cumulative µs/request, both profiled at the same time;"
			echo "one 10 ms sample is about $(calc "10000/$qb" 2) µs/request here, so differences under ~1 µs are noise):"
			echo
			echo "| µs/req more | stock Caddy | kustom-shim | function |"
			echo "|---:|---:|---:|---|"
			awk -v qa="$qa" -v qb="$qb" '
				function sec(s) {
					if (s ~ /ms$/) return substr(s, 1, length(s) - 2) / 1000
					if (s ~ /us$/) return substr(s, 1, length(s) - 2) / 1e6
					if (s ~ /s$/) return substr(s, 1, length(s) - 1)
					return s
				}
				{ name = $0; sub(/^ *[^ ]+ +[^ ]+ +[^ ]+ +[^ ]+ +[^ ]+ +/, "", name) }
				FNR == NR { a[name] = sec($4) * 1e6 / qa; next }
				{ b[name] = sec($4) * 1e6 / qb }
				END {
					for (k in b) {
						if (k ~ /^runtime\.|net\/http\.\(\*conn\)\.serve|serverHandler|caddyhttp\.(\(\*Server\)|\(\*App\)|RouteList|HandlerFunc|\(\*Route\)|\(\*Subroute\))/) continue
						printf "%.2f\t%.2f\t%.2f\t%s\n", b[k] - a[k], a[k], b[k], k
					}
				}' <(cum "$RESULTS/caddy-cpu.pprof") <(cum "$RESULTS/shim-cpu.pprof") |
				sort -t$'\t' -k1,1 -g -r |
				awk -F'\t' 'NR <= 15 { n = $4; gsub(/\|/, "\\|", n); printf "| %s | %s | %s | `%s` |\n", $1, $2, $3, n }'
		} >"$PROFILE_MD"
	else
		log "  could not fetch the profiles (skipped)"
	fi
fi

for c in caddy caddy_metrics nginx shim shim_caddy_metrics; do stop "${PID[$c]}"; done

# ------------------------------------------------------------------ WAN ----
log "WAN: a new TLS connection per call, $WAN_DELAY each way between proxy and upstream, $WAN_CALLS calls per path"
RELAY_PORT=$(free_port)
RELAY=127.0.0.1:$RELAY_PORT
start relay "$BIN/delayrelay" -listen "$RELAY" -to "$UP" -delay "$WAN_DELAY"
wait_port "$RELAY_PORT" "$LAST_PID" relay
WAN_TLS_PORT=$(free_port)
WAN_HTTP_PORT=$(free_port)
{
	caddy_globals wan_shim off
	# The DNS-override form (the app calls https://api.klarna.com, resolved
	# to the shim) and the sidecar form, both over the WAN to the upstream.
	printf 'https://api.klarna.com:%s {\n\tbind 127.0.0.1\n\ttls %s %s\n' "$WAN_TLS_PORT" "$SITE_CRT" "$SITE_KEY"
	shim_block "$RELAY" | indent 1
	printf '}\nhttp://127.0.0.1:%s {\n' "$WAN_HTTP_PORT"
	shim_block "$RELAY" | indent 1
	echo "}"
} >"$WORK/wan_shim.caddyfile"
start_caddy wan_shim "$WAN_TLS_PORT"
WAN_SHIM_PID=$LAST_PID
wait_port "$WAN_HTTP_PORT" "$WAN_SHIM_PID" wan_shim

legacy() {
	"${RUN[@]}" "$BIN/legacyclient" -n "$WAN_CALLS" -warmup 3 -ca "$CA" "$@" 2>"$WORK/legacy.err" || {
		cat "$WORK/legacy.err" >&2
		die "legacyclient $*"
	}
}
WAN_DIRECT=$(legacy -url "https://$RELAY$ORDER_PATH" -host "$KUSTOM_HOST" -auth "$KUSTOM_AUTH")
log "  direct: $WAN_DIRECT"
WAN_SHIM_TLS=$(legacy -url "https://127.0.0.1:$WAN_TLS_PORT$ORDER_PATH" -host "api.klarna.com:$WAN_TLS_PORT" \
	-user "$KLARNA_USER" -pass "$KS_BENCH_KLARNA_PW")
log "  shim (TLS to the shim): $WAN_SHIM_TLS"
WAN_SHIM_HTTP=$(legacy -url "http://127.0.0.1:$WAN_HTTP_PORT$ORDER_PATH" -user "$KLARNA_USER" -pass "$KS_BENCH_KLARNA_PW")
log "  shim (sidecar, HTTP): $WAN_SHIM_HTTP"
stop "$WAN_SHIM_PID"

# ------------------------------------------------------------ streaming ----
log "streaming: a $STREAM_BYTES-byte settlement report through a fresh kustom-shim, then a fresh stock Caddy"
STREAM_PATH="/settlements/v1/reports/payout?size=$STREAM_BYTES"
# stream_rss NAME PORT PID: one small call to open the upstream connection,
# then the download while VmRSS is sampled every 50 ms; prints
# "rss-before-KiB peak-KiB client-line".
stream_rss() {
	local name=$1 port=$2 pid=$3 base peak out sampler stopf=$WORK/$1.stop
	curl -s -o /dev/null -H "Authorization: $KLARNA_AUTH" "http://127.0.0.1:$port$ORDER_PATH"
	sleep 0.5
	base=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
	echo "$base" >"$WORK/$name.peak"
	(
		peak=0
		while [ ! -e "$stopf" ] && [ -e "/proc/$pid/status" ]; do
			while read -r k v _; do
				if [ "$k" = VmRSS: ]; then
					[ "$v" -le "$peak" ] || peak=$v
					break
				fi
			done <"/proc/$pid/status"
			echo "$peak" >"$WORK/$name.peak"
			sleep 0.05
		done
	) &
	sampler=$!
	out=$("${RUN[@]}" "$BIN/legacyclient" -n 1 -warmup 0 -discard -auth "$KLARNA_AUTH" \
		-url "http://127.0.0.1:$port$STREAM_PATH" 2>"$WORK/$name.stream.err") || {
		cat "$WORK/$name.stream.err" >&2
		die "$name: download failed"
	}
	touch "$stopf"
	wait "$sampler" || true
	peak=$(<"$WORK/$name.peak")
	[ "$(kv bytes "$out")" = "$STREAM_BYTES" ] || die "$name: got $(kv bytes "$out") bytes, want $STREAM_BYTES"
	echo "$base $peak $out"
}
STREAM_SHIM_PORT=$(free_port)
write_shim stream_shim "$STREAM_SHIM_PORT" "$(free_port)" "$UP" off
start_caddy stream_shim "$STREAM_SHIM_PORT"
STREAM_SHIM=$(stream_rss stream_shim "$STREAM_SHIM_PORT" "$LAST_PID")
stop "$LAST_PID"
log "  shim: $STREAM_SHIM"
STREAM_CADDY_PORT=$(free_port)
write_stock stream_caddy "$STREAM_CADDY_PORT" "$UP" off
start_caddy stream_caddy "$STREAM_CADDY_PORT"
STREAM_CADDY=$(stream_rss stream_caddy "$STREAM_CADDY_PORT" "$LAST_PID")
stop "$LAST_PID"
log "  stock Caddy: $STREAM_CADDY"

# ------------------------------------------------------------- Go bench ----
GOBENCH_OUT=$WORK/gobench.txt
GOBENCH_FAILED=0
: >"$WORK/gobench.md"
if [ "$GOBENCH" = 1 ]; then
	log "hot path: go test -bench (module, bench/hotpath)"
	{
		"${RUN[@]}" go test ./module -run '^$' -bench 'BenchmarkAuthenticate|BenchmarkClassify|BenchmarkRewriteOrigin' \
			-benchmem -benchtime 300ms -count 1 &&
			"${RUN[@]}" go test ./bench/hotpath -run '^$' -bench 'BenchmarkHotPath$' -benchmem -benchtime 1s -count 5 &&
			"${RUN[@]}" go test ./bench/hotpath -run '^$' -bench 'BenchmarkHotPathParts' -benchmem -benchtime 300ms -count 1
	} >"$GOBENCH_OUT" 2>&1 || GOBENCH_FAILED=1
	if [ "$GOBENCH_FAILED" = 1 ]; then
		cat "$GOBENCH_OUT" >&2
		log "go test -bench failed (reported at the end)"
	else
		# One row per benchmark; with several counts, the median ns/op.
		awk '/^Benchmark/ && /ns\/op/ {
				name = $1; sub(/-[0-9]+$/, "", name)
				for (i = 2; i < NF; i++) {
					if ($(i + 1) == "ns/op") ns[name] = ns[name] " " $i
					if ($(i + 1) == "B/op") bo[name] = $i
					if ($(i + 1) == "allocs/op") al[name] = $i
				}
				if (!(name in seen)) { seen[name] = 1; order[++n] = name }
			}
			END {
				for (k = 1; k <= n; k++) {
					m = split(substr(ns[order[k]], 2), v, " ")
					for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
					printf "| %s | %s | %s | %s | %s |\n", order[k], v[int((m + 1) / 2)], v[1], bo[order[k]], al[order[k]]
				}
			}' "$GOBENCH_OUT" >"$WORK/gobench.md"
	fi
fi

# --------------------------------------------------------------- report ----
MD=$RESULTS/latest.md
med() { median ${R[$1]}; }
rounds() { for v in ${R[$1]}; do printf "%.${2:-0}f " "$v"; done | sed 's/ $//'; }
# "Other load" is the difference of two kernel counts that agree only to a few
# percent (see bench/README.md): below zero is that noise, shown as 0.
nonneg() { awk -v v="$1" 'BEGIN { if (v < 0) v = 0; printf "%.0f", v }'; }
{
	echo "## Results"
	echo
	echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $NCPU CPU ($(sed -n 's/^model name[[:space:]]*: //p;T;q' /proc/cpuinfo)), $(uname -sr)," \
		"$(go version | awk '{print $3}'), wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'), nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||')," \
		"commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' with uncommitted changes')."
	echo "Load: \`wrk -t$WRK_THREADS -c$WRK_CONNS -d$DURATION\` with bench/wrk.lua (4 order reads : 1 order creation), $ROUNDS interleaved rounds, medians."
	echo "Load generator, proxy and upstream share the $NCPU cores; \"other load\" is the CPU that processes outside the benchmark took meanwhile" \
		"(the machine's busy time in /proc/stat minus the benchmark's processes: good to a few percent of the machine, a negative result shows as 0)."
	echo
	echo "### Throughput, latency and CPU per request (ratios to stock Caddy)"
	echo
	echo "| case | req/s | × Caddy | p50 ms | × Caddy | p99 ms | × Caddy | proxy CPU µs/req | × Caddy | upstream CPU µs/req | other load % | req/s by round |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
	B_RPS=$(med caddy:rps) B_P50=$(med caddy:p50) B_P99=$(med caddy:p99) B_CPU=$(med caddy:cpu)
	for c in "${CASES[@]}"; do
		rps=$(med "$c:rps") p50=$(med "$c:p50") p99=$(med "$c:p99")
		cpu="—" cpur="—"
		if [ -n "${R[$c:cpu]:-}" ]; then cpu=$(med "$c:cpu") cpur=$(ratio "$cpu" "$B_CPU"); fi
		printf '| %s | %.0f | %s | %.2f | %s | %.2f | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$c]}" \
			"$rps" "$(ratio "$rps" "$B_RPS")" "$p50" "$(ratio "$p50" "$B_P50")" "$p99" "$(ratio "$p99" "$B_P99")" \
			"$cpu" "$cpur" "$(med "$c:up_cpu")" "$(nonneg "$(med "$c:other")")" "$(rounds "$c:rps")"
	done
	echo
	echo "kustom-shim's \`kustom_shim_requests_total\` counted $SHIM_COUNTED requests over its runs (all of them: metrics on)."
	echo
	echo "### Paired: stock Caddy and kustom-shim loaded at the same time"
	echo
	echo "Each with its own \`wrk -c$WRK_CONNS\`, $ROUNDS × $DURATION; both share whatever the machine has at that moment."
	echo
	echo "| | stock Caddy | kustom-shim | kustom-shim × Caddy | ratio by round |"
	echo "|---|---:|---:|---:|---|"
	echo "| req/s | $(med pair:caddy_rps) | $(med pair:shim_rps) | $(med pair:rps_ratio) | $(rounds pair:rps_ratio 3) |"
	echo "| proxy CPU µs/req | $(med pair:caddy_cpu) | $(med pair:shim_cpu) | $(med pair:cpu_ratio) | $(rounds pair:cpu_ratio 3) |"
	echo "| heap allocations/req (whole process, \`go_memstats_mallocs_total\`) | $(med pair:caddy_allocs) | $(med pair:shim_allocs) | $(med pair:allocs_ratio) | $(rounds pair:allocs_ratio 3) |"
	echo
	echo "### Legacy client across a WAN ($WAN_DELAY each way, a new TLS connection per call, $WAN_CALLS sequential calls)"
	echo
	echo "| path | p50 ms | p99 ms | mean ms | p50 × direct | p99 × direct |"
	echo "|---|---:|---:|---:|---:|---:|"
	D50=$(kv p50_ms "$WAN_DIRECT") D99=$(kv p99_ms "$WAN_DIRECT")
	for row in "direct: client → WAN → upstream|$WAN_DIRECT" \
		"**through kustom-shim**: client → TLS → shim → warm connection over the WAN → upstream|$WAN_SHIM_TLS" \
		"through kustom-shim as a sidecar: client → HTTP → shim → WAN → upstream|$WAN_SHIM_HTTP"; do
		name=${row%%|*} l=${row#*|}
		echo "| $name | $(kv p50_ms "$l") | $(kv p99_ms "$l") | $(kv mean_ms "$l") | $(ratio "$(kv p50_ms "$l")" "$D50") | $(ratio "$(kv p99_ms "$l")" "$D99") |"
	done
	echo
	echo "### Streaming a $(calc "$STREAM_BYTES/1073741824" 2) GiB settlement report (RSS sampled every 50 ms)"
	echo
	echo "| proxy | RSS before MiB | peak RSS MiB | growth MiB | MiB/s |"
	echo "|---|---:|---:|---:|---:|"
	for row in "kustom-shim|$STREAM_SHIM" "stock Caddy|$STREAM_CADDY"; do
		name=${row%%|*} l=${row#*|}
		read -r base peak _ <<<"$l"
		echo "| $name | $(calc "$base/1024" 1) | $(calc "$peak/1024" 1) | $(calc "($peak-$base)/1024" 1) | $(kv mib_per_s "$l") |"
	done
	echo
	if [ -s "$WORK/gobench.md" ]; then
		echo "### Hot path (\`go test -bench -benchmem\`; BenchmarkHotPath: 5 runs)"
		echo
		echo "| benchmark | ns/op (median) | ns/op (min) | B/op | allocs/op |"
		echo "|---|---:|---:|---:|---:|"
		cat "$WORK/gobench.md"
		echo
	fi

	echo "### Goals"
	echo
	echo "| goal | measured | result |"
	echo "|---|---:|---|"
	S_RPS=$(ratio "$(med shim:rps)" "$B_RPS") S_CPU=$(ratio "$(med shim:cpu)" "$B_CPU")
	P_RPS=$(med pair:rps_ratio) P_CPU=$(med pair:cpu_ratio)
	echo "| throughput ≥ 0.97 × stock Caddy (one after the other) | $S_RPS | $(pass "$S_RPS >= 0.97") |"
	echo "| throughput ≥ 0.97 × stock Caddy (paired, at the same time) | $P_RPS | $(pass "$P_RPS >= 0.97") |"
	echo "| CPU per request ≤ 1.05 × stock Caddy (one after the other) | $S_CPU | $(pass "$S_CPU <= 1.05") |"
	echo "| CPU per request ≤ 1.05 × stock Caddy (paired, at the same time) | $P_CPU | $(pass "$P_CPU <= 1.05") |"
	W50=$(ratio "$(kv p50_ms "$WAN_SHIM_TLS")" "$D50") W99=$(ratio "$(kv p99_ms "$WAN_SHIM_TLS")" "$D99")
	echo "| WAN legacy client: median through the shim ≤ 0.55 × direct | $W50 | $(pass "$W50 <= 0.55") |"
	echo "| WAN legacy client: p99 through the shim ≤ 0.55 × direct | $W99 | $(pass "$W99 <= 0.55") |"
	read -r sb sp _ <<<"$STREAM_SHIM"
	G=$(calc "($sp-$sb)/1024" 1)
	echo "| streaming $(calc "$STREAM_BYTES/1073741824" 2) GiB: peak RSS growth ≤ 16 MiB | $G MiB | $(pass "$G <= 16") |"
	if [ -s "$WORK/gobench.md" ]; then
		for sub in get_order_sidecar create_order_klarna_host; do
			# The fastest of 5 runs: interference from other work only ever adds
			# time. 1.5x: a map lookup stays one lookup (a scan of 10 000
			# credentials would be ~1000x); what remains is the garbage collector
			# marking the larger credential map and cache misses.
			read -r a_ns a_al <<<"$(awk -F' *\\| *' -v n="BenchmarkHotPath/credentials=10/$sub" '$2 == n { print $4, $6 }' "$WORK/gobench.md")"
			read -r b_ns b_al <<<"$(awk -F' *\\| *' -v n="BenchmarkHotPath/credentials=10000/$sub" '$2 == n { print $4, $6 }' "$WORK/gobench.md")"
			rr=$(ratio "${b_ns:-0}" "${a_ns:-0}")
			echo "| hot path ($sub) constant: 10 000 vs 10 credentials, min ns/op ≤ 1.5×, same allocs | $rr, ${a_al:-?} → ${b_al:-?} allocs | $(pass "${b_ns:-0} > 0 && $rr <= 1.5 && ${a_al:-0} == ${b_al:-1}") |"
		done
	fi
	if [ -s "$PROFILE_MD" ]; then
		echo
		echo "### Where kustom-shim's extra CPU goes"
		echo
		cat "$PROFILE_MD"
	fi
} >"$MD"

cat "$MD"
log "written to ${MD#"$ROOT"/}"
[ "$GOBENCH_FAILED" = 0 ] || die "go test -bench failed"
