#!/bin/busybox sh
# /init of the test guest: configure eth0 from the kernel command line, fetch
# metadata paths with a hand-written HTTP request over busybox nc, print every
# raw response base64-encoded between markers on the serial console, power off.
#
# Kernel command line (all optional except imd.ip):
#   imd.ip=10.0.0.2/24        address of eth0
#   imd.gw=10.0.0.1           gateway for imd.route=default
#   imd.route=onlink          onlink    : 169.254.169.254/32 dev eth0 (guest ARPs for it)
#                             linklocal : 169.254.0.0/16 dev eth0
#                             default   : default via imd.gw (guest ARPs for the gateway)
#                             none      : no route added
#   imd.paths=/a,/b           GET each path, in order
#   imd.token=21600           first PUT /latest/api/token (IMDSv2) and send the
#                             returned token with every GET
#   imd.host=169.254.169.254  imd.port=80  imd.http=1.0|1.1  imd.wait=5 (nc seconds)
# Console protocol (parsed by tests/guest/qemu.py):
#   IMDINIT <uptime>            userspace reached
#   IMDNET <ok|fail> <detail>   eth0 configured (or why not)
#   IMDBEGIN <n> <METHOD> <path>  then base64 lines of the raw response, then
#   IMDEND <n> <nc exit status>
#   IMDDONE <uptime>
# The kernel argument names use the "imd." prefix: the kernel keeps
# dotted "module.param" words out of init's environment, so they are read
# from /proc/cmdline, and "imd" names no kernel module.

/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
# Paths may hold "?" or "*": word splitting below must not glob.
set -f
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

echo "IMDINIT $(cut -d' ' -f1 /proc/uptime)"

for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         failover net_failover virtio_net; do
  if [ -e "/lib/modules/$m.ko" ]; then
    insmod "/lib/modules/$m.ko" || echo "IMDWARN insmod $m failed"
  else
    echo "IMDWARN module $m missing"
  fi
done

ip=""; gw=""; route="onlink"; paths=""; token_ttl=""
host="169.254.169.254"; port="80"; http="1.0"; wait_s="5"
for word in $(cat /proc/cmdline); do
  case "$word" in
    imd.ip=*) ip="${word#imd.ip=}" ;;
    imd.gw=*) gw="${word#imd.gw=}" ;;
    imd.route=*) route="${word#imd.route=}" ;;
    imd.paths=*) paths="${word#imd.paths=}" ;;
    imd.token=*) token_ttl="${word#imd.token=}" ;;
    imd.host=*) host="${word#imd.host=}" ;;
    imd.port=*) port="${word#imd.port=}" ;;
    imd.http=*) http="${word#imd.http=}" ;;
    imd.wait=*) wait_s="${word#imd.wait=}" ;;
  esac
done

finish() {
  echo "IMDDONE $(cut -d' ' -f1 /proc/uptime)"
  sync
  poweroff -f
}

# Kernel messages must not interleave with the base64 lines from here on.
echo 1 > /proc/sys/kernel/printk

# The NIC appears asynchronously after virtio_net binds; bounded wait (5 s).
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
if [ ! -e /sys/class/net/eth0 ]; then
  echo "IMDNET fail no-eth0"
  finish
fi
ip link set lo up
ip link set eth0 up
if [ -z "$ip" ] || ! ip addr add "$ip" dev eth0; then
  echo "IMDNET fail address '$ip'"
  finish
fi
case "$route" in
  onlink) ip route add 169.254.169.254/32 dev eth0 ;;
  linklocal) ip route add 169.254.0.0/16 dev eth0 ;;
  default) ip route add default via "$gw" dev eth0 ;;
  none) ;;
  *) echo "IMDNET fail route '$route'"; finish ;;
esac
echo "IMDNET ok $(ip -o -4 addr show dev eth0 | awk '{print $4}') $(ip route | tr '\n' ';')"

seq_no=0
token=""

# request METHOD PATH [EXTRA-HEADER]: one HTTP request, raw response printed.
# stdin of nc stays open (fd 3 on a fifo) until nc is done: a half-closed
# connection is not what real clients send, and some servers drop it.
request() {
  method="$1"; path="$2"; extra="$3"
  seq_no=$((seq_no + 1))
  rm -f /tmp/req.fifo /tmp/resp
  mkfifo /tmp/req.fifo
  timeout -s KILL "$wait_s" nc -w "$wait_s" "$host" "$port" </tmp/req.fifo >/tmp/resp &
  ncpid=$!
  exec 3>/tmp/req.fifo
  {
    printf '%s %s HTTP/%s\r\n' "$method" "$path" "$http"
    printf 'Host: %s\r\n' "$host"
    printf 'User-Agent: interceptor-test-guest\r\n'
    if [ "$http" = "1.1" ]; then printf 'Connection: close\r\n'; fi
    if [ -n "$extra" ]; then printf '%s\r\n' "$extra"; fi
    if [ "$method" = "PUT" ]; then printf 'Content-Length: 0\r\n'; fi
    printf '\r\n'
  } >&3
  wait "$ncpid"
  rc=$?
  exec 3>&-
  echo "IMDBEGIN $seq_no $method $path"
  base64 /tmp/resp
  echo "IMDEND $seq_no $rc"
}

if [ -n "$token_ttl" ]; then
  request PUT /latest/api/token "X-aws-ec2-metadata-token-ttl-seconds: $token_ttl"
  # The token is the body: everything after the blank line.
  token=$(sed '1,/^\r*$/d' /tmp/resp | tr -d '\r\n')
fi

old_ifs="$IFS"
IFS=","
for p in $paths; do
  IFS="$old_ifs"
  if [ -n "$token" ]; then
    request GET "$p" "X-aws-ec2-metadata-token: $token"
  else
    request GET "$p" ""
  fi
  IFS=","
done
IFS="$old_ifs"

finish
