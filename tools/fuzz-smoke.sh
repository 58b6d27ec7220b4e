#!/usr/bin/env bash
# A short, bounded fuzz run of every cargo-fuzz target in fuzz/ (see fuzz/README.md).
#
#   bash tools/fuzz-smoke.sh            # every target, 20 s each (decoders: 10 s)
#   FUZZ_SECONDS=60 bash tools/fuzz-smoke.sh inbound_xml
#
# It builds the fuzz crate (release, debug assertions on, no sanitizer: the library is
# `#![forbid(unsafe_code)]`, what we look for is panics), seeds a scratch corpus per target
# from mappings/fixtures and tests/vectors, and runs each target for a bounded time. It exits
# non-zero on the first crash, timeout or out-of-memory, and prints the input that caused it.
#
# Stable Rust only: cargo-fuzz passes -Z flags to rustc, which RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept. Nothing outside fuzz/ is written, except by `cargo install`.
#
# Environment:
#   FUZZ_SECONDS     seconds per inbound target (default 20); decoders gets half
#   FUZZ_MAX_LEN     largest input in bytes (default 8192)
#   FUZZ_RSS_MB      memory limit in MB (default 2048)
#   FUZZ_SANITIZER   none (default) or address

set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

seconds="${FUZZ_SECONDS:-20}"
max_len="${FUZZ_MAX_LEN:-8192}"
rss_mb="${FUZZ_RSS_MB:-2048}"
sanitizer="${FUZZ_SANITIZER:-none}"
all_targets=(inbound_xml inbound_json decoders)
if (($# > 0)); then targets=("$@"); else targets=("${all_targets[@]}"); fi

export RUSTC_BOOTSTRAP=1
start=$SECONDS
step() { printf '\n== fuzz-smoke [%3ds] %s\n' "$((SECONDS - start))" "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  step "cargo-fuzz is missing: cargo install cargo-fuzz --locked"
  cargo install cargo-fuzz --locked
fi
step "using $(cargo fuzz --version)"

# ---------------------------------------------------------------- seeds (git-ignored)
# fuzz/seeds/<target>/ is rebuilt on every run from the files it copies, so that the sample
# messages live only where they are maintained.
seeds="fuzz/seeds"
rm -rf "$seeds"
mkdir -p "$seeds/inbound_xml" "$seeds/inbound_json" "$seeds/decoders"
shopt -s nullglob
for file in mappings/fixtures/*/in/*; do
  name="$(basename "$file")"
  partner="$(basename "$(dirname "$(dirname "$file")")")"
  case "$name" in
    *.expected.*) ;;                                      # what the input must become
    *.xml) cp "$file" "$seeds/inbound_xml/$partner--$name" ;;
    *.json) cp "$file" "$seeds/inbound_json/$partner--$name" ;;
  esac
done
# Canonical events (what outbound fixtures start from) are valid CloudEvents bodies.
for file in mappings/fixtures/*/out/*.event.json; do
  partner="$(basename "$(dirname "$(dirname "$file")")")"
  cp "$file" "$seeds/inbound_json/$partner--out--$(basename "$file")"
done
shopt -u nullglob
# Boarding passes (`ID|string`, one a line) and MRZ groups (consecutive lines) from the
# decoder test vectors.
if [[ -f tests/vectors/bcbp.txt ]]; then
  awk -v dir="$seeds/decoders" '
    /^#/ || !/\|/ { next }
    { n++; pass = substr($0, index($0, "|") + 1); printf "%s", pass > (dir "/bcbp-" n); close(dir "/bcbp-" n) }
  ' tests/vectors/bcbp.txt
fi
if [[ -f tests/vectors/mrz.txt ]]; then
  awk -v dir="$seeds/decoders" '
    function flush() { if (group != "") { n++; f = dir "/mrz-" n; printf "%s", group > f; close(f) }; group = "" }
    { sub(/^[ \t]+/, ""); sub(/[ \t\r]+$/, "") }
    /^#/ || $0 == "" { flush(); next }
    { group = group $0 "\n" }
    END { flush() }
  ' tests/vectors/mrz.txt
fi
for target in "${all_targets[@]}"; do
  step "seeds for $target: $(find "$seeds/$target" -type f | wc -l) files in $seeds/$target"
done

# ---------------------------------------------------------------- build
# One build for every target; the runs below use its binaries directly, so that all targets
# test the same build even if the sources change meanwhile.
build_flags=(--sanitizer "$sanitizer")
step "RUSTC_BOOTSTRAP=1 cargo fuzz build ${build_flags[*]}  (release + debug assertions; a cold build takes minutes)"
build_start=$SECONDS
cargo fuzz build "${build_flags[@]}"
step "built in $((SECONDS - build_start)) s"
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="fuzz/target/$triple/release"

# ---------------------------------------------------------------- run
for target in "${targets[@]}"; do
  time_limit="$seconds"
  dict=()
  case "$target" in
    inbound_xml) dict=("-dict=fuzz/dicts/xml.dict") ;;
    inbound_json) dict=("-dict=fuzz/dicts/json.dict") ;;
    decoders) time_limit=$(((seconds + 1) / 2)) ;;
    *) echo "fuzz-smoke: unknown target $target (known: ${all_targets[*]})" >&2; exit 2 ;;
  esac
  corpus="fuzz/corpus/smoke/$target"
  artifacts="fuzz/artifacts/$target"
  rm -rf "$corpus"
  mkdir -p "$corpus" "$artifacts"
  cp -r "$seeds/$target/." "$corpus/"
  before="$(find "$artifacts" -type f | sort)"
  args=(-max_total_time="$time_limit" -max_len="$max_len" -rss_limit_mb="$rss_mb" -timeout=10
        -print_final_stats=1 "${dict[@]}")
  step "$target for $time_limit s: $bin_dir/$target -artifact_prefix=$artifacts/ ${args[*]} $corpus"
  set +e
  "$bin_dir/$target" -artifact_prefix="$artifacts/" "${args[@]}" "$corpus" 2>&1 |
    grep -v -e '^#[0-9]*[[:space:]]*\(NEW\|REDUCE\|pulse\)' -e '^[[:space:]]*NEW_FUNC' \
      -e '^"' -e '^###### ' -e 'Failed to find function "__sanitizer'
  status=${PIPESTATUS[0]}
  if ((status != 0)); then
    # Still under `set +e`: `head` closing a pipe early must not cut the report short.
    step "FAILED: $target (exit $status)"
    new="$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort))"
    for file in $new; do
      echo "-- $file ($(wc -c <"$file") bytes), hex:"
      od -An -tx1 -v "$file" | head -c 4000
      echo "-- as text (escaped):"
      head -c 2000 "$file" | od -An -c -v | head -40
      echo "-- reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target $file"
    done
    exit 1
  fi
  set -e
  step "ok: $target ran $time_limit s without a crash; corpus now $(find "$corpus" -type f | wc -l) files"
done

step "all fuzz targets passed (${targets[*]}) in $((SECONDS - start)) s"
