#!/bin/bash
# Runs inside the Debian 12 VM (tests/vm/test_debian_vm.py), started by
# vmtest.service once systemd reached multi-user.target. Installs the package
# as an operator would, configures backend and node, and checks what issue 16
# asks of a real systemd. One "VMTEST <check> ok|FAIL <detail>" line per
# check on the serial console, "VMTEST done" at the end, then power off.
set -u
exec >/dev/ttyS0 2>&1
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "VMTEST $*"; }
check() {  # check NAME COMMAND...: ok when the command succeeds
  local name=$1; shift
  if out=$("$@" 2>&1); then say "$name ok ${out//$'\n'/ | }"; else say "$name FAIL ${out//$'\n'/ | }"; fi
}
finish() { say done; sync; systemctl poweroff --no-block; exit 0; }
trap finish EXIT

t0=$(date +%s)
check install apt-get install -y -q --no-install-recommends /root/interceptor.deb
check configs-0600 sh -c 'test "$(stat -c %a:%U /etc/interceptor/node.toml /etc/interceptor/backend.toml | sort -u)" = 600:root'
check system-user id interceptor
check nothing-started sh -c '! systemctl is-active -q interceptor-node interceptor-backend && ! systemctl is-enabled -q interceptor-node'

admin=vm-admin-token-0123456789 node_tok=vm-node-token-0123456789 key=vm-signing-key-0123456789
cat >/etc/interceptor/backend.toml <<EOF
[backend]
admin_token = "$admin"
signing_key = "$key"
[backend.node_tokens]
"vm-node" = "$node_tok"
EOF
cat >/etc/interceptor/node.toml <<EOF
[node]
node_name = "vm-node"
backend_url = ["http://127.0.0.1:8700"]
node_token = "$node_tok"
signing_key = "$key"
datapath = "nft"
tap_patterns = ["vmtap*"]
EOF
check start systemctl enable --now interceptor-backend.service interceptor-node.service
dump() { journalctl -u "$1" --no-pager -n 50 | sed "s/^/VMLOG /"; }
for unit in interceptor-backend.service interceptor-node.service; do
  systemctl is-active -q "$unit" || dump "$unit"
done
check units-active sh -c 'systemctl is-active interceptor-backend.service && systemctl is-active interceptor-node.service'
check notify-ready sh -c 'systemctl show -p Type,StatusText,WatchdogUSec interceptor-node interceptor-backend | tr "\n" " "; systemctl show -p Type --value interceptor-node | grep -qx notify'
w1=$(systemctl show -p WatchdogTimestampMonotonic --value interceptor-node)
sleep 20
w2=$(systemctl show -p WatchdogTimestampMonotonic --value interceptor-node)
check watchdog-pings sh -c "echo $w1 $w2; test '$w2' -gt '$w1'"
check journal-fields sh -c 'journalctl -u interceptor-node -o json --no-pager | grep -q "\"LOGGER\""'

# A guest: a namespace on a veth pair whose host end is the node's "tap".
ip netns add guest
ip link add vmtap0 type veth peer name eth0 netns guest
ip link set vmtap0 up
# A routed tap: the node routes the guest's address back through it (systemd's
# sysctl defaults set rp_filter=2, which drops sources the node cannot route).
ip route add 10.0.0.2/32 dev vmtap0
ip -n guest link set lo up
ip -n guest link set eth0 up
ip -n guest addr add 10.0.0.2/24 dev eth0
ip -n guest route add 169.254.169.254 dev eth0
export INTERCEPTOR_URL=http://127.0.0.1:8700 INTERCEPTOR_TOKEN=$admin
interceptor ctl customer create --id c1 --name c1 >/dev/null
interceptor ctl server create --id i-vm-1 --customer c1 --hostname vm-guest >/dev/null
interceptor ctl server bind i-vm-1 --node vm-node --ifname vmtap0 >/dev/null
read_id() { ip netns exec guest curl -s --max-time 10 http://169.254.169.254/latest/meta-data/instance-id; }
for _ in $(seq 1 60); do [ "$(read_id)" = i-vm-1 ] && break; sleep 1; done
[ "$(read_id)" = i-vm-1 ] || { dump interceptor-node.service; ip netns exec guest curl -sv --max-time 5 http://169.254.169.254/latest/meta-data/instance-id 2>&1 | sed "s/^/VMLOG /"; sysctl net.ipv4.conf.all.rp_filter | sed "s/^/VMLOG /"; }
check guest-reads-metadata sh -c "test \"\$(ip netns exec guest curl -s --max-time 10 http://169.254.169.254/latest/meta-data/instance-id)\" = i-vm-1 && echo i-vm-1"
# One listener per metadata address: 169.254.169.254, fd00:ec2::254, fe80::a9fe:a9fe.
check fd-store sh -c 'n=$(systemctl show -p NFileDescriptorStore --value interceptor-node); echo "stored=$n"; test "$n" = 3'

# systemctl restart while the guest polls every 10 ms (new connection each).
ip netns exec guest sh -c 'while [ ! -e /run/stop-poll ]; do curl -s -o /dev/null -w "%{http_code}\n" --max-time 20 http://169.254.169.254/latest/meta-data/instance-id; sleep 0.01; done' >/run/poll.log 2>&1 &
poller=$!
sleep 3
for i in 1 2 3; do systemctl restart interceptor-node.service; sleep 2; done
touch /run/stop-poll
wait $poller
systemctl is-active -q interceptor-node.service || dump interceptor-node.service
check restart-0-failures sh -c 'total=$(wc -l </run/poll.log); bad=$(grep -vcx 200 /run/poll.log); echo "requests=$total failures=$bad"; test "$total" -gt 10 && test "$bad" = 0'
check restart-handed-over sh -c 'n=$(journalctl -u interceptor-node --no-pager | grep -c "(1 tap listeners inherited)"); echo "inherited=$n"; test "$n" -ge 3'
check datapath-while-running sh -c 'nft list tables | grep -q "inet interceptor"'

check remove apt-get remove -y -q interceptor
check no-nft-table sh -c '! nft list tables | grep -q interceptor'
check no-ip-rule sh -c '! ip rule | grep -q "lookup 4711"'
check no-bpf-pin sh -c 'test -z "$(ls -A /sys/fs/bpf/interceptor 2>/dev/null)"'
check no-listener sh -c '! ss -Hltn | grep -E ":(80|8700|8701|9100) "'
check configs-kept-on-remove test -e /etc/interceptor/node.toml
say "elapsed $(( $(date +%s) - t0 ))s"
