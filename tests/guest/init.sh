#!/bin/busybox sh
# /init of the test guest: configure eth0 from the kernel command line, fetch
# metadata paths with a hand-written HTTP request over busybox nc, print every
# raw response base64-encoded between markers on the serial console, power off.
#
# Kernel command line (all optional except imd.ip in http mode):
#   imd.mode=http             http  : fetch imd.paths over the network (default)
#                             cdrom : mount the CD-ROM (/dev/sr0, ISO 9660) and print
#                                     the files imd.files=/a,/b of it
#                             serial: send !!CODE# packets (imd.codes=REQUEST_METADATA,…)
#                                     on imd.port_dev=/dev/ttyS1 and print each answer line;
#                                     a code CLOUDSIGMA/KEY sends the CloudSigma request
#                                     "<\n/KEY\n>" instead (CLOUDSIGMA alone: the whole context)
#   imd.ip=10.0.0.2/24        address of eth0; "none": no IPv4 at all (IPv6 only)
#   imd.gw=10.0.0.1           gateway for imd.route=default
#   imd.route=onlink          onlink    : 169.254.169.254/32 dev eth0 (guest ARPs for it)
#                             linklocal : 169.254.0.0/16 dev eth0
#                             default   : default via imd.gw (guest ARPs for the gateway)
#                             ip6onlink : fd00:ec2::254/128 dev eth0 (guest solicits it)
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
#   (cdrom, serial) IMDBEGIN <n> FILE <path> | SERIAL <code>, the base64 lines of
#   the file or of the answer line, IMDEND <n> <status>; and IMDID <instance-id>
#   as the guest itself read it (meta_data.json "uuid", meta-data or the serial
#   meta-data JSON "instance-id")
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

load_modules() {
  for m in "$@"; do
    if [ -e "/lib/modules/$m.ko" ]; then
      insmod "/lib/modules/$m.ko" || echo "IMDWARN insmod $m failed"
    else
      echo "IMDWARN module $m missing"
    fi
  done
}

ip=""; gw=""; route="onlink"; paths=""; token_ttl=""
host="169.254.169.254"; port="80"; http="1.0"; wait_s="5"
mode="http"; files=""; codes="REQUEST_METADATA"; port_dev="/dev/ttyS1"
for word in $(cat /proc/cmdline); do
  case "$word" in
    imd.mode=*) mode="${word#imd.mode=}" ;;
    imd.files=*) files="${word#imd.files=}" ;;
    imd.codes=*) codes="${word#imd.codes=}" ;;
    imd.port_dev=*) port_dev="${word#imd.port_dev=}" ;;
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

seq_no=0

# show N KIND WHAT FILE STATUS: print FILE base64-encoded between markers.
show() {
  echo "IMDBEGIN $1 $2 $3"
  base64 "$4"
  echo "IMDEND $1 $5"
}

if [ "$mode" = "cdrom" ]; then
  load_modules scsi_common scsi_mod libata ata_piix cdrom sr_mod isofs
  n=0
  while [ ! -b /dev/sr0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  mkdir -p /mnt
  if ! mount -t iso9660 -o ro /dev/sr0 /mnt; then
    echo "IMDCDROM fail mount"
    finish
  fi
  echo "IMDCDROM ok"
  if [ -f /mnt/openstack/latest/meta_data.json ]; then
    echo "IMDID $(sed -n 's/^ *"uuid": "\([^"]*\)".*/\1/p' /mnt/openstack/latest/meta_data.json)"
  elif [ -f /mnt/meta-data ]; then
    echo "IMDID $(sed -n 's/^instance-id: *//p' /mnt/meta-data)"
  fi
  old_ifs="$IFS"; IFS=","
  for f in $files; do
    IFS="$old_ifs"
    seq_no=$((seq_no + 1))
    if [ -f "/mnt$f" ]; then show $seq_no FILE "$f" "/mnt$f" 0; else show $seq_no FILE "$f" /dev/null 1; fi
    IFS=","
  done
  IFS="$old_ifs"
  # Read-only: a write must fail.
  if touch /mnt/probe 2>/dev/null; then echo "IMDRO no"; else echo "IMDRO yes"; fi
  umount /mnt
  finish
fi

if [ "$mode" = "serial" ]; then
  stty -F "$port_dev" raw -echo 115200 || echo "IMDWARN stty $port_dev failed"
  exec 4<>"$port_dev"
  old_ifs="$IFS"; IFS=","
  for c in $codes; do
    IFS="$old_ifs"
    seq_no=$((seq_no + 1))
    case "$c" in
      # CloudSigma's framing (what cloud-init's Cepko writes): "<\n/KEY\n>".
      CLOUDSIGMA*) printf '<\n%s\n>' "${c#CLOUDSIGMA}" >&4 ;;
      *) printf '!!%s#\n' "$c" >&4 ;;
    esac
    line=""
    if read -r -t 20 line <&4; then rc=0; else rc=1; fi
    printf '%s\n' "$line" | tr -d '\r' > /tmp/answer
    show $seq_no SERIAL "$c" /tmp/answer $rc
    case "$line" in
      '!!RESPONSE_METADATA#'*)
        printf '%s' "${line#!!RESPONSE_METADATA#}" | tr -d '\r' | base64 -d > /tmp/meta
        echo "IMDID $(sed -n 's/^ *"instance-id": "\([^"]*\)".*/\1/p' /tmp/meta)" ;;
    esac
    IFS=","
  done
  IFS="$old_ifs"
  exec 4>&-
  finish
fi

load_modules virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
  failover net_failover virtio_net

# The NIC appears asynchronously after virtio_net binds; bounded wait (5 s).
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
if [ ! -e /sys/class/net/eth0 ]; then
  echo "IMDNET fail no-eth0"
  finish
fi
ip link set lo up
# IPv6: no duplicate address detection, so the link-local address is usable
# at once (the test's only guest on the link).
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad 2>/dev/null
ip link set eth0 up
if [ "$ip" = "none" ]; then
  :
elif [ -z "$ip" ] || ! ip addr add "$ip" dev eth0; then
  echo "IMDNET fail address '$ip'"
  finish
fi
case "$route" in
  onlink) ip route add 169.254.169.254/32 dev eth0 ;;
  linklocal) ip route add 169.254.0.0/16 dev eth0 ;;
  default) ip route add default via "$gw" dev eth0 ;;
  ip6onlink)
    ip -6 route add fd00:ec2::254/128 dev eth0
    # The link-local source address appears once the link is up (bounded, 5 s).
    n=0
    while ! ip -6 addr show dev eth0 | grep -q 'inet6 fe80' && [ $n -lt 50 ]; do
      sleep 0.1; n=$((n + 1))
    done ;;
  none) ;;
  *) echo "IMDNET fail route '$route'"; finish ;;
esac
echo "IMDNET ok $(ip -o addr show dev eth0 | awk '{print $4}' | tr '\n' ' ')$(ip route | tr '\n' ';') $(ip -6 route | tr '\n' ';')"

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
