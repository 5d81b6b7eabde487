#!/usr/bin/env bash
# The quick start: set everything up, then run the whole product on one
# machine — the central backend on SQLite, the node daemon (nftables by
# default; DEMO_DATAPATH=ebpf for the eBPF datapath) and a demo guest that
# reads its own metadata from http://169.254.169.254/ through its tap.
#
# The "compute node" is a network namespace of its own and the guest another
# one behind a veth pair (the node end plays the tap), so nothing here touches
# this machine's own network. Everything it makes is removed on exit, also
# when a step fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh >/dev/null
bin=$here/.venv/bin/interceptor
datapath=${DEMO_DATAPATH:-nft}

id=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
node_ns=imdemo-node-$id
guest_ns=imdemo-guest-$id
tap=tapdemo$id
work=$(mktemp -d /tmp/interceptor-demo.XXXXXX)
pids=()

cleanup() {
  set +e
  # Node first: on SIGTERM it removes its datapath and listeners.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null
    wait "${pids[i]}" 2>/dev/null
  done
  ip netns exec "$node_ns" "$bin" node --cleanup --datapath "$datapath" \
    --bpf-instance "demo-$id" >/dev/null 2>&1
  ip netns del "$guest_ns" 2>/dev/null
  ip netns del "$node_ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_node() { ip netns exec "$node_ns" "$@"; }

rand() { head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
admin_token=$(rand); node_token=$(rand); signing_key=$(rand)

cat >"$work/backend.toml" <<EOF
[backend]
listen_host = "127.0.0.1"
listen_port = 8700
operator_port = 8701
database = "sqlite:///$work/backend.sqlite"
admin_token = "$admin_token"
signing_key = "$signing_key"
[backend.node_tokens]
demo-node = "$node_token"
EOF
cat >"$work/node.toml" <<EOF
[node]
node_name = "demo-node"
backend_url = "http://127.0.0.1:8700"
node_token = "$node_token"
signing_key = "$signing_key"
datapath = "$datapath"
tap_patterns = ["tapdemo*"]
operator_port = 9100
bpf_instance = "demo-$id"
state_dir = "$work/node-state"
EOF
chmod 600 "$work"/*.toml

wait_http() {  # wait_http URL: up to 10 s for a 200 inside the node namespace
  for _ in $(seq 100); do
    in_node curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "demo: $1 did not come up; logs:" >&2
  tail -n 20 "$work"/*.log >&2
  return 1
}

step "compute node namespace $node_ns"
ip netns add "$node_ns"
in_node ip link set lo up

step "central backend (SQLite at $work/backend.sqlite)"
# Started directly, not through a shell function: $! must be the process
# itself, or the cleanup would signal a subshell and leave the daemon running.
ip netns exec "$node_ns" "$bin" backend serve --config "$work/backend.toml" \
  >"$work/backend.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:8701/healthz

step "an instance, written through the REST API with 'interceptor ctl'"
ctl() { in_node "$bin" ctl --url http://127.0.0.1:8700 --token "$admin_token" "$@"; }
ctl customer create --id demo-customer --name "Demo customer" >/dev/null
ctl server create --id i-0demo0000000001 --customer demo-customer --hostname demo-vm >/dev/null
ctl server set-keys i-0demo0000000001 "demo=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyOnlyForTheQuickStart demo@example" >/dev/null
printf '#cloud-config\nhostname: demo-vm\n' | ctl server set-user-data i-0demo0000000001 - >/dev/null
ctl server bind i-0demo0000000001 --node demo-node --ifname "$tap" >/dev/null
ctl server get i-0demo0000000001

step "node daemon ($datapath datapath)"
ip netns exec "$node_ns" "$bin" node --config "$work/node.toml" >"$work/node.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:9100/healthz

step "demo guest $guest_ns behind tap $tap (only an on-link route to 169.254.169.254)"
ip netns add "$guest_ns"
ip link add "$tap" netns "$node_ns" type veth peer name eth0 netns "$guest_ns"
in_node ip link set "$tap" up
ip netns exec "$guest_ns" ip link set lo up
ip netns exec "$guest_ns" ip link set eth0 up
ip netns exec "$guest_ns" ip addr add 192.0.2.10/24 dev eth0
ip netns exec "$guest_ns" ip route add 169.254.169.254/32 dev eth0

guest_get() {
  printf '\n\033[36mguest$ curl http://169.254.169.254%s\033[0m\n' "$1"
  ip netns exec "$guest_ns" curl -fsS --retry 20 --retry-delay 0 --retry-all-errors \
    --max-time 2 "http://169.254.169.254$1"
  echo
}
guest_get /latest/meta-data/
guest_get /latest/meta-data/instance-id
guest_get /latest/meta-data/hostname
guest_get /latest/meta-data/public-keys/0/openssh-key
guest_get /latest/user-data
guest_get /openstack/latest/meta_data.json

step "node metrics (operator listener, unreachable from guests)"
in_node curl -fs http://127.0.0.1:9100/metrics | grep -E '^interceptor_node_(requests_total|cache_(hits|misses)_total)'

step "done: stopping and removing everything"
