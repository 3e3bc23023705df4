#!/usr/bin/env bash
# Fuzzes the WebSocket frame parsers (v1 and v2), the filter compiler and the
# topic/pattern parser (with the trie and ACL-containment oracles).
#
# Usage:
#   ./scripts/fuzz.sh                 stable, seeded run: 1,000,000 inputs per target
#   ./scripts/fuzz.sh --short         stable, seeded run: 50,000 inputs per target (test.sh)
#   ./scripts/fuzz.sh --libfuzzer [RUNS] [SECONDS]
#                                     cargo-fuzz (nightly + `cargo install cargo-fuzz`):
#                                     RUNS executions (default 1,000,000) per target,
#                                     at most SECONDS (default 600) each
#
# The stable run executes the same target bodies (fuzz/common/targets.rs) from
# tests/fuzz_parsers.rs; FUZZ_ITERS and FUZZ_SEED override its count and seed.
# libFuzzer writes new inputs to a scratch corpus, not to the committed seeds in
# fuzz/corpus/; crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(ws_frame filter topic)
mode=${1:-long}

case $mode in
    long | --long)
        export FUZZ_ITERS=${FUZZ_ITERS:-1000000}
        cargo test --test fuzz_parsers -- --nocapture
        ;;
    --short)
        export FUZZ_ITERS=${FUZZ_ITERS:-50000}
        cargo test --locked --test fuzz_parsers -- --nocapture
        ;;
    --libfuzzer)
        runs=${2:-1000000}
        seconds=${3:-600}
        if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
            echo "error: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)" >&2
            exit 1
        fi
        scratch=$(mktemp -d)
        trap 'rm -rf "$scratch"' EXIT
        cd fuzz
        for t in "${TARGETS[@]}"; do
            mkdir -p "$scratch/$t"
            echo "==> $t"
            set +e
            cargo +nightly fuzz run --sanitizer none "$t" "$scratch/$t" "corpus/$t" -- \
                -runs="$runs" -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 \
                -seed=1 -print_final_stats=1 >"$scratch/$t.log" 2>&1
            code=$?
            set -e
            grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$t.log" || true
            if [ "$code" -ne 0 ]; then
                tail -n 40 "$scratch/$t.log" >&2
                echo "error: $t failed; see fuzz/artifacts/$t" >&2
                exit 1
            fi
        done
        ;;
    *)
        sed -n '2,16p' "$0"
        exit 2
        ;;
esac
