#!/usr/bin/env bash
# Builds the libFuzzer targets in tests/fuzz/ with clang (AddressSanitizer and
# UndefinedBehaviorSanitizer on) and runs each for a bounded time, starting
# from its seed corpus in tests/fuzz/corpus/NAME (copied: the repository's
# corpus is never changed by a run).
#
#   contrib/fuzz.sh                 every target, FUZZ_SECONDS each (default 20)
#   contrib/fuzz.sh parse config    only these
#
# Targets: config (template config JSON), parse (pool file, procs cmd and
# signal, names), agent_reader (the host reading an untrusted guest),
# agent_guest (the agent's framing and dispatch, linked with an op
# table that answers without running), dockerfile (the template
# Dockerfile parser and its variable expansion), dnsmsg (the resolver's
# checks on DNS queries from guests and answers from upstream), usage
# (the guest's /proc/meminfo and the host's /proc files the usage file
# parses), connect (emberfs-e2b's Connect envelope parser: a streaming
# request's body from the network), peer (the peer server's request
# decoding and authentication: cluster/peer_wire.c), etcdwatch (the etcd
# client's watch stream decoder, fed in chunks, and its range answer
# decoder), manifest (a snapshot store record's chunk list:
# objstore/manifest.c). A crash, a leak or a sanitizer report fails the
# run; the input that did it is kept in build-fuzz/crash-NAME-*.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
out=$top/build-fuzz
mkdir -p "$out"
seconds=${FUZZ_SECONDS:-20}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config parse agent_reader agent_guest dockerfile dnsmsg usage connect peer etcdwatch manifest)

command -v clang >/dev/null || { echo "contrib/fuzz.sh: clang missing (contrib/deps.sh installs it)" >&2; exit 1; }
[ -f build/config.h ] || { meson setup build >/dev/null; }

CFLAGS=(-g -O1 -std=gnu11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
	-Wall -Wextra -Wno-unused-parameter -I"$top/build" -I"$top/common" -I"$top/engine" -I"$top/netpool" -I"$top/objstore"
	$(pkg-config --cflags json-c))
LIBS=($(pkg-config --libs json-c) -lpthread)
common=("$top"/common/*.c)

status=0
for t in "${targets[@]}"; do
	case $t in
	config) srcs=("$top/tests/fuzz/fuzz_config.c" "$top/engine/config.c" "$top/engine/drivers.c"
		"$top/engine/imageref.c" "$top/engine/parse.c" "$top/netpool/egress.c" "${common[@]}") ;;
	parse) srcs=("$top/tests/fuzz/fuzz_parse.c" "$top/engine/parse.c" "${common[@]}") ;;
	agent_reader) srcs=("$top/tests/fuzz/fuzz_agent_reader.c" "$top/engine/agent_client.c" "${common[@]}") ;;
	agent_guest) srcs=(-I"$top/engine/guest" "$top/tests/fuzz/fuzz_agent_guest.c"
		$(ls "$top"/engine/guest/*.c | grep -v '/main\.c$')) ;;
	dockerfile) srcs=("$top/tests/fuzz/fuzz_dockerfile.c" "$top/engine/dockerfile.c" "${common[@]}") ;;
	dnsmsg) srcs=("$top/tests/fuzz/fuzz_dnsmsg.c" "$top/netpool/dnsmsg.c" "$top/netpool/egress.c" "${common[@]}" -lldns) ;;
	usage) srcs=("$top/tests/fuzz/fuzz_usage.c" "$top/engine/usage_parse.c" "${common[@]}") ;;
	connect) srcs=(-I"$top" -I"$top/e2b" "$top/tests/fuzz/fuzz_connect.c" "$top/e2b/connect.c" "${common[@]}") ;;
	peer) srcs=(-I"$top" -I"$top/cluster" "$top/tests/fuzz/fuzz_peer.c" "$top/cluster/peer_wire.c" "${common[@]}") ;;
	etcdwatch) srcs=(-I"$top/cluster" "$top/tests/fuzz/fuzz_etcdwatch.c" "$top/cluster/etcd.c" "${common[@]}" -lcurl) ;;
	manifest) srcs=("$top/tests/fuzz/fuzz_manifest.c" "$top/objstore/manifest.c" "${common[@]}") ;;
	*) echo "contrib/fuzz.sh: unknown target $t" >&2; exit 2 ;;
	esac
	echo "== fuzz $t (${seconds} s)" >&2
	clang "${CFLAGS[@]}" "${srcs[@]}" "${LIBS[@]}" -o "$out/fuzz_$t"
	work=$(mktemp -d)
	cp -r "$top/tests/fuzz/corpus/$t/." "$work/"
	if ! (cd "$out" && ASAN_OPTIONS=detect_leaks=1 ./"fuzz_$t" -max_total_time="$seconds" -max_len=65536 \
		-timeout=10 -rss_limit_mb=2048 -artifact_prefix="$out/crash-$t-" -print_final_stats=1 "$work" \
		2>"$out/fuzz_$t.log"); then
		echo "fuzz $t: FAILED (log: $out/fuzz_$t.log)" >&2
		tail -n 40 "$out/fuzz_$t.log" >&2
		status=1
	else
		grep -E "stat::number_of_executed_units|cov:" "$out/fuzz_$t.log" | tail -n 2 >&2 || true
	fi
	rm -rf "$work"
done
exit $status
