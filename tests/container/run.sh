#!/usr/bin/env bash
# The container image, built from the repository's Dockerfile and checked running: readiness, the
# unprivileged user, data kept in the volume across a re-created container, a clean stop on SIGTERM,
# the health check following liveness (a database outage leaves it healthy), PostgreSQL through
# OPAMPD_DATABASE__URL, the image's size, and compose.yaml and deploy/compose.cluster.yaml (three
# nodes behind HAProxy) under podman-compose.
#
# Needs root, podman, runc, mmdebstrap, podman-compose, jq and curl (.ci/run installs them), and
# the network reach of this machine: Debian's packages and crates.io (for `cargo vendor`). No image
# registry is used: the base images are made here from Debian packages and the machine's Rust
# toolchain (tests/container/*.Containerfile), and the Dockerfile is built on them through its
# RUST_IMAGE and RUNTIME_IMAGE arguments. Everything podman stores lives in one scratch directory,
# removed on exit. It differs from what users build only in where the base images and crates come
# from and in an unoptimised release profile. Decisions:
# docs/adr/0031-container-test-on-local-base-images.md, docs/adr/0032-container-test-in-every-ci-run.md,
# docs/adr/0033-container-test-runs-the-cluster-compose-file.md.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/tests/container"
started=$(date +%s)
passed=0
# The shutdown timeout of the shipped configuration: SIGTERM must stop the container within it.
shutdown_timeout=10
# The runtime image is its base plus two binaries, a configuration file and a user: what the
# Dockerfile adds beyond the binaries is bounded, so that a toolchain, the build tree or packages
# creeping in fail the test. The binaries are printed, not bounded: the test's unoptimised ones are
# larger than users' (about 21 MB together). The base here (Debian minbase, 127 MB) is larger than
# the public slim image (75 MB).
max_extra_mb=5

# Each step's wall-clock seconds and the CPU seconds of the processes it ran (what this shell has
# waited for, podman's builds included): on a busy machine the wall clock says little about what
# the step costs an idle CI machine; the CPU seconds, over its 2 cores, do.
ticks=$(getconf CLK_TCK)
children_cpu() {
  local f
  read -ra f </proc/$$/stat
  echo $(((f[15] + f[16]) / ticks))
}
timings=""
step_name=""
step_end() {
  [ -n "$step_name" ] || return 0
  timings+=$(printf '%5d s wall %5d s CPU  %s' $(($(date +%s) - step_started)) \
    $(($(children_cpu) - step_cpu)) "$step_name")$'\n'
  step_name=""
}
step() {
  step_end
  step_name=$*
  step_started=$(date +%s)
  step_cpu=$(children_cpu)
  echo "== container: $* ($((step_started - started)) s)"
}
ok() {
  passed=$((passed + 1))
  echo "ok: $*"
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# poll SECONDS WHAT COMMAND...: runs COMMAND until it succeeds, failing after SECONDS.
poll() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then
      fail "$what: not within ${seconds} s"
    fi
    sleep 0.5
  done
}

for tool in podman runc mmdebstrap podman-compose jq curl cargo; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (.ci/run installs it)"
done
[ "$(id -u)" = 0 ] || fail "run as root (podman with runc and cgroupfs, mmdebstrap)"

work=$(mktemp -d /var/tmp/opampd-container.XXXXXX)
# CONTAINER_TEST_STORAGE=DIR keeps podman's storage there across runs and skips building the images
# it already holds (for working on this script, and for .ci/run, which makes the images first with
# `run.sh --images`, niced in the background while it lints and tests, then runs the checks on the
# same storage). Without it everything is built anew and removed on exit.
storage=${CONTAINER_TEST_STORAGE:-$work}
# podman's settings for this machine, and storage of its own so that nothing else is touched:
# runc and cgroupfs (crun refuses the sandbox's cgroup layout), no default ulimits (the sandbox
# refuses to raise them), vfs (no overlay assumed).
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$work/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$storage/storage"
runroot = "$storage/run"
EOF
export CONTAINERS_CONF="$work/containers.conf" CONTAINERS_STORAGE_CONF="$work/storage.conf"
# podman complains about systemd, which these machines do not run, whenever a container with a
# health check starts or goes (the test runs each check itself), and its DNS server about the
# missing syslog when a network goes; its other errors still show.
podman() {
  command podman "$@" 2> >(grep -v -e 'unable to get systemd connection' \
    -e 'failed to connect to syslog' >&2)
}

load_pid=""
builder_pid=""
compose_up=false
cluster_up=false
cleanup() {
  local status=$?
  set +e
  for pid in $load_pid $builder_pid; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ "$status" != 0 ]; then
    step_end
    printf '%s' "$timings" >&2
    echo "-- logs of the containers left (the run failed)" >&2
    for c in $(podman ps -a --format '{{.Names}}'); do
      echo "-- $c" >&2
      podman logs --tail 30 "$c" >&2
    done
  fi
  if $compose_up; then
    compose down -v >/dev/null 2>&1
  fi
  if $cluster_up; then
    cluster down -v >/dev/null 2>&1
  fi
  podman rm -a -f -t 0 >/dev/null 2>&1
  podman network rm opampd-test-net >/dev/null 2>&1
  podman volume prune -f >/dev/null 2>&1
  [ "$storage" = "$work" ] && podman system reset -f >/dev/null 2>&1
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
opamp_port=$(free_port)
api_port=$(free_port)
api="http://127.0.0.1:$api_port"
key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
keys="[{name=\"ops\",key=\"$key\",role=\"admin\"}]"

get() { curl -sS --max-time 5 -H "Authorization: Bearer $key" "$api$1"; }
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$api$1" || true; }
is_status() { [ "$(status_of "$2")" = "$1" ]; }
have() { [ -n "${CONTAINER_TEST_STORAGE:-}" ] && podman image exists "$1"; }

# tear_down PROJECT VOLUME: `PROJECT down -v` (PROJECT is the compose or cluster function), then
# no container and not the project's volume left.
tear_down() {
  local project=$1 volume=$2 left
  "$project" down -v >"$work/$project.log" 2>&1 || {
    cat "$work/$project.log" >&2
    fail "podman-compose down of $project"
  }
  left=$(podman ps -a --format '{{.Names}}' | wc -l)
  [ "$left" = 0 ] || fail "$left containers left after $project down"
  [ "$(podman volume ls -q | grep -c "$volume" || true)" = 0 ] || fail "$project left its volume $volume"
}

step "base images from Debian packages"
# Debian's minimal base, without the documentation, manual pages and locales that the public slim
# image leaves out too.
base=localhost/opampd-test/debian:bookworm-slim
# shellcheck disable=SC2016 # "$1" is for mmdebstrap: the root being made
clean_hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*'
have $base || mmdebstrap --quiet --variant=minbase \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --customize-hook="$clean_hook" \
  bookworm "$work/rootfs.tar" >/dev/null
have $base || podman import -q "$work/rootfs.tar" $base >/dev/null
rm -f "$work/rootfs.tar"
# The builder image is built beside the two others (mostly package downloads). The Rust
# toolchain running this script is mounted into the builder image's build, not fetched.
have localhost/opampd-test/rust:local || podman build --pull=never --layers=false --build-arg BASE_IMAGE=$base \
  -v "$(rustc --print sysroot)":/toolchain:ro -t localhost/opampd-test/rust:local \
  -f "$here/builder.Containerfile" "$here" >"$work/builder.log" 2>&1 &
builder_pid=$!
have localhost/opampd-test/postgres:15 || podman build --pull=never --layers=false --build-arg BASE_IMAGE=$base \
  -t localhost/opampd-test/postgres:15 -f "$here/postgres.Containerfile" "$here" \
  >"$work/postgres.log" 2>&1 || {
  tail -20 "$work/postgres.log" >&2
  fail "podman build of the PostgreSQL image"
}
have localhost/opampd-test/haproxy:2.6 || podman build --pull=never --layers=false --build-arg BASE_IMAGE=$base \
  -t localhost/opampd-test/haproxy:2.6 -f "$here/haproxy.Containerfile" "$here" \
  >"$work/haproxy.log" 2>&1 || {
  tail -20 "$work/haproxy.log" >&2
  fail "podman build of the HAProxy image"
}
wait $builder_pid || {
  builder_pid=""
  tail -20 "$work/builder.log" >&2
  fail "podman build of the builder image"
}
builder_pid=""
ok "base images: Debian minbase, a Rust builder, PostgreSQL 15, HAProxy 2.6"
step "the Dockerfile's build stage, with crates vendored from Cargo.lock"
# Builds reach crates.io only through this machine's proxy, whose certificate the images do not
# trust; so the crates of Cargo.lock are vendored here and given to cargo in the build stage through
# its own configuration, mounted for the build only: the Dockerfile stays what users build.
image=localhost/opampd-test/opampd:test
have $image || cargo vendor --quiet --locked --manifest-path "$repo/Cargo.toml" "$work/vendor" >/dev/null
# The same configuration makes the release profile unoptimised (opt-level 0, no LTO): the
# optimised build costs about 20 CPU minutes, which CI's 30 minutes cannot spare. The build stage
# still runs as users run it, every crate compiled from source; what is checked here (user, volume,
# signals, health, databases) does not depend on how hard the compiler optimised.
# (docs/adr/0032-container-test-in-every-ci-run.md)
cat >"$work/cargo-config.toml" <<'EOF'
[source.crates-io]
replace-with = "vendored-sources"
[source.vendored-sources]
directory = "/vendor"
[profile.release]
opt-level = 0
lto = "off"
codegen-units = 16
EOF
# --format docker keeps HEALTHCHECK (the OCI format has no such field); --layers=false commits once
# per stage instead of copying the whole file system for every instruction (vfs).
have $image || podman build --pull=never --layers=false --format docker \
  -v "$work/vendor":/vendor:ro -v "$work/cargo-config.toml":/usr/local/cargo/config.toml:ro \
  --build-arg RUST_IMAGE=localhost/opampd-test/rust:local --build-arg RUNTIME_IMAGE=$base \
  -t $image "$repo" >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log" >&2
  fail "podman build of the Dockerfile"
}
size=$(podman image inspect --format '{{.Size}}' $image)
base_size=$(podman image inspect --format '{{.Size}}' $base)
binaries=$(podman run --rm --entrypoint stat $image -c %s /usr/local/bin/opampd /usr/local/bin/opampctl |
  awk '{ total += $1 } END { print total + 0 }')
((binaries > 0)) || fail "no binaries in /usr/local/bin"
size_mb=$((size / 1000000))
extra_mb=$(((size - base_size - binaries) / 1000000))
echo "image size: $size_mb MB ($size bytes): the base $((base_size / 1000000)) MB" \
  "+ the binaries $((binaries / 1000000)) MB + $extra_mb MB"
((extra_mb <= max_extra_mb)) || fail "the image adds $extra_mb MB besides the binaries, over $max_extra_mb MB"
[ "$(podman image inspect --format '{{.Config.User}}' $image)" = opampd ] || fail "image user"
health=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' $image)
[ "$health" = '["CMD","opampd","healthcheck"]' ] || fail "HEALTHCHECK is $health"
ok "image built ($size_mb MB), user opampd, HEALTHCHECK opampd healthcheck"
if [ "${1:-}" = --images ]; then
  # Only the images: the checks below time a running server, so .ci/run runs them in the
  # foreground once its tests are done, on the same CONTAINER_TEST_STORAGE.
  step_end
  printf '%s' "$timings"
  exit 0
fi

step "the load generator, the collector of the checks"
# One WebSocket connection that stays up. CI's `cargo test` has built it already.
cargo build --quiet --locked -p opampd-load --manifest-path "$repo/Cargo.toml"
load="${CARGO_TARGET_DIR:-$repo/target}/debug/opampd-load"
start_collector() { # start_collector [HEADER]
  local extra=()
  [ $# -gt 0 ] && extra=(--header "$1")
  "$load" --url "ws://127.0.0.1:$opamp_port/v1/opamp" -n 1 --duration 600s --quiet "${extra[@]}" \
    >"$work/load.out" 2>"$work/load.err" &
  load_pid=$!
}
stop_collector() {
  kill "$load_pid" 2>/dev/null || true
  wait "$load_pid" 2>/dev/null || true
  load_pid=""
}
stored_in() { # stored_in CONTAINER: the collector $id has its row in that PostgreSQL
  [ "$(podman exec "$1" psql -U opampd -d opampd -Atc \
    "select count(*) from collectors where id = '$id'")" = 1 ]
}
one_connected() { [ "$(get '/api/v1/collectors?limit=5' | jq -c '[.items[] | .connected]')" = '[true]' ]; }
run_opampd() { # run_opampd NAME [podman run options...]
  local name=$1
  shift
  podman run -d --name "$name" -p "127.0.0.1:$opamp_port:4320" -p "127.0.0.1:$api_port:8080" \
    -e OPAMPD_API__KEYS="$keys" "$@" $image >/dev/null
}

step "SQLite in the volume: readiness, user, data kept, SIGTERM, health check"
podman volume create opampd-test-data >/dev/null
run_opampd opampd-test -v opampd-test-data:/var/lib/opampd
poll 60 "/readyz answers 200" is_status 200 /readyz
[ "$(curl -sS "$api/readyz" | jq -r .status)" = ready ] || fail "/readyz body"
[ "$(curl -sS "$api/livez" | jq -r .status)" = ok ] || fail "/livez body"
ok "/readyz and /livez answer through the published port"

uids=$(podman exec opampd-test sh -c 'grep ^Uid: /proc/1/status' | tr -s '[:space:]' ' ')
[ "$uids" = "Uid: 10001 10001 10001 10001 " ] || fail "PID 1 runs as: $uids"
[ "$(podman exec opampd-test id -un)" = opampd ] || fail "exec user"
[ "$(podman exec opampd-test stat -c %U /var/lib/opampd/opampd.db)" = opampd ] || fail "db owner"
ok "opampd runs as the unprivileged user opampd (uid 10001), which owns the database"

start_collector
poll 30 "the collector connects" one_connected
id=$(get '/api/v1/collectors' | jq -r '.items[0].id')
labelled=$(curl -sS -X PUT -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"env":"container-test"}' "$api/api/v1/collectors/$id/labels" | jq -c .labels)
[ "$labelled" = '{"env":"container-test"}' ] || fail "labelling answered $labelled"
ok "a collector connected over WebSocket and was labelled ($id)"

podman healthcheck run opampd-test >/dev/null || fail "the health check of a live server"
[ "$(podman inspect --format '{{.State.Health.Status}}' opampd-test)" = healthy ] || fail "not healthy"
# A hung process: stopped, it still accepts connections (the kernel does) but answers nothing.
podman kill --signal STOP opampd-test >/dev/null
if podman healthcheck run opampd-test >/dev/null 2>&1; then
  fail "the health check passed while opampd was stopped"
fi
podman kill --signal CONT opampd-test >/dev/null
podman healthcheck run opampd-test >/dev/null || fail "the health check after SIGCONT"
ok "HEALTHCHECK follows liveness: 0 while alive, 1 while the process is hung, 0 again after"

begin=$(date +%s%N)
podman kill --signal TERM opampd-test >/dev/null
code=$(timeout $((shutdown_timeout + 5)) podman wait opampd-test) || fail "no exit after SIGTERM"
elapsed_ms=$((($(date +%s%N) - begin) / 1000000))
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
((elapsed_ms <= shutdown_timeout * 1000)) || fail "stopped in $elapsed_ms ms, over ${shutdown_timeout} s"
# opampd's own lines only: podman adds complaints of its own (no systemd for health timers).
last=$(podman logs opampd-test 2>&1 | grep -F 'opampd::' | tail -1)
[[ "$last" == *"opampd::app: stopped" ]] || fail "last log line: $last"
ok "SIGTERM: exit code 0 in $elapsed_ms ms (limit ${shutdown_timeout} s), last log line says stopped"
stop_collector

podman rm opampd-test >/dev/null
run_opampd opampd-test -v opampd-test-data:/var/lib/opampd
poll 60 "/readyz of the re-created container" is_status 200 /readyz
kept=$(get "/api/v1/collectors/$id" | jq -c '[.labels, .state, .state_reason, .connected]')
[ "$kept" = '[{"env":"container-test"},"disconnected","server_termination",false]' ] ||
  fail "after re-creating the container the collector is $kept"
reasons=$(get "/api/v1/collectors/$id/transitions" | jq -c '[.items[] | .reason]')
[ "$reasons" = '["server_termination","initial"]' ] || fail "history: $reasons"
ok "a new container on the same volume has the label and the server_termination"
podman rm -f -t 0 opampd-test >/dev/null

step "PostgreSQL through OPAMPD_DATABASE__URL, and a database outage"
podman network create opampd-test-net >/dev/null
pg_password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
podman run -d --name opampd-test-pg --network opampd-test-net -e POSTGRES_USER=opampd \
  -e POSTGRES_DB=opampd -e POSTGRES_PASSWORD="$pg_password" localhost/opampd-test/postgres:15 >/dev/null
poll 60 "PostgreSQL accepts connections" podman exec opampd-test-pg pg_isready -U opampd -d opampd
run_opampd opampd-test --network opampd-test-net \
  -e OPAMPD_DATABASE__URL="postgres://opampd:$pg_password@opampd-test-pg:5432/opampd"
poll 60 "/readyz on PostgreSQL" is_status 200 /readyz
start_collector
poll 30 "the collector connects" one_connected
id=$(get '/api/v1/collectors' | jq -r '.items[0].id')
poll 30 "the collector's row in PostgreSQL" stored_in opampd-test-pg
ok "opampd on PostgreSQL: ready, and the collector stored in its database"

podman stop -t 5 opampd-test-pg >/dev/null
poll 30 "/readyz says 503 while the database is down" is_status 503 /readyz
[ "$(curl -sS "$api/readyz" | jq -r .status)" = degraded ] || fail "/readyz body in the outage"
podman healthcheck run opampd-test >/dev/null || fail "the health check failed in a database outage"
[ "$(podman inspect --format '{{.State.Health.Status}}' opampd-test)" = healthy ] || fail "unhealthy"
if podman exec opampd-test opampd healthcheck --ready >/dev/null 2>&1; then
  fail "healthcheck --ready passed in a database outage"
fi
ok "database down: /readyz 503 degraded, container healthy, healthcheck --ready fails"
podman start opampd-test-pg >/dev/null
poll 60 "/readyz is 200 again once the database is back" is_status 200 /readyz
ok "database back: ready again"
stop_collector
podman rm -f -t 0 opampd-test opampd-test-pg >/dev/null
podman network rm opampd-test-net >/dev/null

step "compose.yaml under podman-compose"
mkdir "$work/secrets"
sh "$repo/deploy/new-secrets.sh" "$work/secrets" >/dev/null
export OPAMPD_SECRETS_DIR="$work/secrets" OPAMPD_IMAGE=$image \
  POSTGRES_IMAGE=localhost/opampd-test/postgres:15 \
  OPAMPD_OPAMP_PORT=$opamp_port OPAMPD_API_PORT=$api_port
compose() { podman-compose -p opampd-test -f "$repo/compose.yaml" "$@"; }
compose_up=true
compose up -d --no-build >"$work/compose.log" 2>&1 || {
  cat "$work/compose.log" >&2
  fail "podman-compose up"
}
read_secrets() { # read_secrets DIR: the API key and the collector token that new-secrets.sh wrote
  key=$(sed -n 's/^OPAMPD_API__KEYS=.*key="\([^"]*\)".*/\1/p' "$1/opampd.env")
  token=$(sed -n 's/^OPAMPD_OPAMP__AUTH__TOKENS=\["\([^"]*\)"\]/\1/p' "$1/opampd.env")
  if [ -z "$key" ] || [ -z "$token" ]; then
    fail "new-secrets.sh wrote no key or token"
  fi
}
read_secrets "$work/secrets"
poll 120 "/readyz of the compose deployment" is_status 200 /readyz
[ "$(status_of /api/v1/collectors)" = 401 ] || fail "the API answered without a key"
start_collector "Authorization: Bearer $token"
poll 30 "the collector connects through the published port" one_connected
id=$(get '/api/v1/collectors' | jq -r '.items[0].id')
poll 30 "the collector's row in the compose PostgreSQL" stored_in opampd-test_postgres_1
podman healthcheck run opampd-test_opampd_1 >/dev/null || fail "opampd's health check in compose"
podman healthcheck run opampd-test_postgres_1 >/dev/null || fail "postgres's health check in compose"
ok "compose: ready, a collector connected with its token and stored in PostgreSQL, both healthy"
stop_collector
tear_down compose opampd-test_postgres-data
compose_up=false
ok "compose down removed the containers and the volume"

step "deploy/compose.cluster.yaml under podman-compose: three nodes behind HAProxy"
# The same images, fresh secrets, and deploy/haproxy.cfg as shipped: its server addresses are the
# compose services' names (tests/it/replicas.rs rewrites them for processes on loopback instead).
mkdir "$work/cluster-secrets"
sh "$repo/deploy/new-secrets.sh" "$work/cluster-secrets" >/dev/null
export OPAMPD_SECRETS_DIR="$work/cluster-secrets" HAPROXY_IMAGE=localhost/opampd-test/haproxy:2.6
cluster() { podman-compose -p opampd-test-cluster -f "$repo/deploy/compose.cluster.yaml" "$@"; }
nodes="opampd-a opampd-b opampd-c"
cluster_up=true
cluster up -d --no-build >"$work/cluster.log" 2>&1 || {
  cat "$work/cluster.log" >&2
  fail "podman-compose up of the cluster"
}
read_secrets "$work/cluster-secrets"
node_ready() { podman exec "opampd-test-cluster_$1_1" opampd healthcheck --ready; }
for node in $nodes; do
  poll 120 "$node's readiness" node_ready "$node"
  podman healthcheck run "opampd-test-cluster_${node}_1" >/dev/null || fail "$node's health check"
done
# podman-compose starts the services in order without waiting for PostgreSQL's health: a node
# whose start-up finds no database yet, or HAProxy started while a node's name does not resolve,
# is restarted by its restart policy. The restarts are printed: they are the start-up's cost.
restarts=""
for service in postgres $nodes haproxy; do
  restarts+=" $service=$(podman inspect --format '{{.RestartCount}}' "opampd-test-cluster_${service}_1")"
done
echo "restarts during up:$restarts"
# Only HAProxy publishes ports: what answers on them comes through it.
poll 60 "/readyz through HAProxy" is_status 200 /readyz
[ "$(status_of /api/v1/collectors)" = 401 ] || fail "the API through HAProxy answered without a key"
ok "cluster: the three nodes ready and healthy, HAProxy answers /readyz on its published API port"

start_collector "Authorization: Bearer $token"
poll 30 "the collector connects through HAProxy" one_connected
id=$(get '/api/v1/collectors' | jq -r '.items[0].id')
poll 30 "the collector's row in the cluster's PostgreSQL" stored_in opampd-test-cluster_postgres_1
# Each node asked directly, at its address on the compose network (which this root host reaches):
# all three have the collector connected, though only one holds its connection.
for node in $nodes; do
  address=$(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \
    "opampd-test-cluster_${node}_1")
  seen=$(curl -sS --max-time 5 -H "Authorization: Bearer $key" \
    "http://$address:8080/api/v1/collectors/$id" | jq -c '[.id, .connected]') || true
  [ "$seen" = "[\"$id\",true]" ] || fail "$node ($address) has the collector as $seen"
done
# The API's round-robin reaches all three nodes: three requests in a row through HAProxy come from
# three nodes, exactly one of which holds the collector (/readyz counts a node's own collectors).
spread() {
  local counts=()
  for _ in 1 2 3; do
    counts+=("$(curl -sS --max-time 5 "$api/readyz" | jq .collectors)")
  done
  [ "$(printf '%s\n' "${counts[@]}" | sort | tr '\n' ' ')" = "0 0 1 " ]
}
poll 30 "three /readyz in a row through HAProxy from three nodes, one holding the collector" spread
ok "cluster: a collector connected through HAProxy ($id), stored, and connected on every node's API"
stop_collector
tear_down cluster opampd-test-cluster_postgres-data
cluster_up=false
ok "cluster down removed the five containers and the volume"

step_end
printf '%s' "$timings"
echo "container test took $(($(date +%s) - started)) s wall, $(children_cpu) s CPU"
echo "container: $passed passed, 0 failed"
