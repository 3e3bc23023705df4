# EXTRA_CASES file for the shared peer benchmark (peer-bench's run.sh): puts the router
# on Redis in the same run as raw Redis Streams and NATS JetStream.
#
#   cargo build --release
#   EXTRA_CASES=$PWD/benches/peer-cases.sh REPEAT=3 ONLY=nats ../shared/peer-bench/run.sh
#   python3 ../shared/peer-bench/report.py ratio <results>/results.jsonl event-router nats-jetstream
#
# Sourced by run.sh after its servers are up. Starts, once, two `event-router serve --redis`
# replicas against run.sh's in-memory Redis ($REDIS_PORT) on 127.0.0.1:18081 and :18082,
# and stops them by PID on exit (chained with run.sh's own EXIT trap). Each durable
# scenario runs as `event-router bench --durable` over WebSocket:
#   event-router         one replica: publishers and subscribers on :18081
#   event-router-2rep    two replicas: one bench process on each with half of the
#                        connections and events, each on a topic and group of its own
#                        (so that neither sees the other's events): the two replicas'
#                        aggregate on one Redis
# Publishers are not held back by deliveries (--window of the whole run), as the peers'
# producers are not. Fan-out scenarios are not the router's to match here (live delivery has its own
# benchmark) and are skipped.
#
# ROUTER_BIN overrides the binary (default: target/release/event-router of this tree).

ROUTER_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUTER_BIN=${ROUTER_BIN:-$ROUTER_HERE/target/release/event-router}
ROUTER_PORTS=(18081 18082)
ROUTER_PIDS=()
ROUTER_PREFIX=pb$$

if [[ ! -x "$ROUTER_BIN" ]]; then
  echo "peer-cases: $ROUTER_BIN is missing; run cargo build --release first" >&2
  return 1
fi

router_stop() {
  local pid i
  for pid in "${ROUTER_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${ROUTER_PIDS[@]}"; do
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
# Chain with run.sh's EXIT trap (it stops Redis and NATS).
ROUTER_PREV_TRAP=$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT$//")
trap 'router_stop; '"$ROUTER_PREV_TRAP" EXIT

for port in "${ROUTER_PORTS[@]}"; do
  RUST_LOG=warn "$ROUTER_BIN" serve --listen "127.0.0.1:$port" \
    --redis "redis://127.0.0.1:$REDIS_PORT/" --redis-key-prefix "$ROUTER_PREFIX" \
    >"${OUT:-/tmp}/router-$port.log" 2>&1 &
  ROUTER_PIDS+=($!)
done
for port in "${ROUTER_PORTS[@]}"; do
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
EXTRA_PIDS="${ROUTER_PIDS[*]}"

# router_json BENCH-JSON: the bench report in redis-limit's line format.
router_json() {
  python3 -c '
import json, sys
r = json.load(sys.stdin)
lat = r.get("latency_ms") or {}
us = lambda k: round(float(lat.get(k, 0)) * 1000)
el = r.get("elapsed_seconds") or 0
out = {
    "tool": "event-router bench",
    "events_per_s": round(r["delivery_rate"]) if r.get("delivery_rate") else 0,
    "publish_per_s": round(r["publish_rate"]) if r.get("publish_rate") else 0,
    "lat_us": {"p50": us("p50"), "p90": us("p90"), "p99": us("p99"), "p999": us("p99.9"),
               "max": us("max"), "mean": us("mean"), "n": lat.get("count", 0)},
    "lost": r.get("lost", 0), "dups": r.get("duplicates", 0),
    "errors": r.get("errors", 0), "elapsed_s": el,
}
if r.get("first_error"):
    out["error"] = r["first_error"]
print(json.dumps(out))
'
}

# router_bench URL ARGS...: one bench process against one replica, as one JSON line.
# router_two ARGS...: one bench process per replica, each with half of the load (the
# caller halves it); rates and counts are summed, latencies are the worse of the two.
# case_run runs its command as a subprocess: these run through `bash -c` (exported).
router_bench() { # URL ARGS...
  local url=$1; shift
  "$ROUTER_BIN" bench --url "$url" --json -q --timeout 75s "$@" | router_json
}
router_two() { # GROUP ARGS... (already halved)
  local group=$1 a b; shift
  a=$(mktemp); b=$(mktemp)
  router_bench "http://127.0.0.1:$ROUTER_PORT1" --durable "$group-a" --topic "$group.a" "$@" >"$a" &
  local pa=$!
  router_bench "http://127.0.0.1:$ROUTER_PORT2" --durable "$group-b" --topic "$group.b" "$@" >"$b" &
  local pb=$!
  wait "$pa" "$pb"
  python3 -c '
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
out = dict(a)
for k in ("events_per_s", "publish_per_s", "lost", "dups", "errors"):
    out[k] = a.get(k, 0) + b.get(k, 0)
out["lat_us"] = {k: max(a["lat_us"].get(k, 0), b["lat_us"].get(k, 0)) for k in a["lat_us"]}
out["replicas"] = 2
print(json.dumps(out))
' "$a" "$b"
  rm -f "$a" "$b"
}

export ROUTER_BIN ROUTER_PORT1=${ROUTER_PORTS[0]} ROUTER_PORT2=${ROUTER_PORTS[1]}
export -f router_json router_bench router_two

extra_case() { # NAME ARGS... (the redis-limit flags of the scenario)
  local name=$1; shift
  local mode="" producers=1 consumers=1 events=1000 batch=1 payload=256 rate=""
  while (($#)); do
    case $1 in
      --mode) mode=$2; shift ;;
      --producers) producers=$2; shift ;;
      --consumers) consumers=$2; shift ;;
      --events) events=$2; shift ;;
      --batch) batch=$2; shift ;;
      --payload) payload=$2; shift ;;
      --rate) rate=$2; shift ;;
    esac
    shift
  done
  [[ "$mode" == durable ]] || return 0
  local group="pb-${name//[^A-Za-z0-9_-]/-}-$RANDOM"
  # A topic of its own: the routers live through the whole run, and a group
  # left from an earlier case on a shared topic would get (and cost) every
  # later case's events.
  local args=(--durable "$group" --topic "$group.load" --publishers "$producers" --subscribers "$consumers"
    --events "$events" --batch "$batch" --payload-bytes "$payload" --prefetch 256 --warmup 0
    --window "$events")
  [[ -n "$rate" ]] && args+=(--rate "$rate")
  case_run "$name" event-router -- bash -c 'router_bench "$@"' _ "http://127.0.0.1:$ROUTER_PORT1" "${args[@]}"
  # Two replicas: each bench process gets half of everything, its own group member.
  if ((producers >= 2 && consumers >= 2)); then
    local half=("$group-2" --publishers $((producers / 2)) --subscribers $((consumers / 2))
      --events $((events / 2)) --batch "$batch" --payload-bytes "$payload" --prefetch 256 --warmup 0
      --window $((events / 2)))
    [[ -n "$rate" ]] && half+=(--rate $((rate / 2)))
    case_run "$name" event-router-2rep -- bash -c 'router_two "$@"' _ "${half[@]}"
  fi
}
