#!/bin/sh
# Records the canned rulesets test_capture.py reads. Run as root:  sh tests/unit/sidecar/capture_nft/record.sh
# Each case runs in its own throwaway network namespace (never the host's rules): Docker's embedded-DNS
# rules, the sidecar's capture, then one change a NET_ADMIN container could make. NAME.json is
# `nft -j list ruleset`, NAME.save is `iptables-save`, NAME.legacy is `iptables-legacy-save` (when not empty).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../../.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
if [ $# -eq 0 ]; then
  for name in intact nat_table_ahead notrack_table output_nat_table inet_table_named_nat netdev_ingress \
      base_chain_in_iptables_nat native_rule_in_prerouting native_rule_in_docker_chain native_notrack_in_iptables_raw \
      docker_dns_nftables docker_dns_nftables_abused legacy_nat legacy_raw legacy_mangle legacy_docker_dns; do
    unshare --net sh "$0" "$name"
  done
  echo recorded; exit 0
fi
name=$1
iptables-restore --noflush <<'R'
*nat
:DOCKER_OUTPUT - [0:0]
:DOCKER_POSTROUTING - [0:0]
-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT
-A POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING
-A DOCKER_OUTPUT -d 127.0.0.11/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 127.0.0.11:36541
-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.11:45439
-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p tcp -m tcp --sport 36541 -j SNAT --to-source :53
-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport 45439 -j SNAT --to-source :53
COMMIT
R
(cd "$repo" && "$py" -c 'from addons import capture; capture.install(1337, [9000], [5432])')
DOCKER_DNS='
  chain dns-dnat {
    type nat hook output priority -100;
    ip daddr 127.0.0.11 udp dport 53 counter dnat to 127.0.0.11:45439
    ip daddr 127.0.0.11 tcp dport 53 counter dnat to 127.0.0.11:36541
  }
  chain dns-snat {
    type nat hook postrouting priority 100;
    ip saddr 127.0.0.11 udp sport 45439 counter snat to :53
    ip saddr 127.0.0.11 tcp sport 36541 counter snat to :53
  }'
case $name in
  intact) ;;
  nat_table_ahead) nft add table ip evil
    nft 'add chain ip evil pre { type nat hook prerouting priority -101 ; }'
    nft add rule ip evil pre tcp dport 9080 dnat to 172.18.0.5 ;;
  notrack_table) nft add table ip evil2
    nft 'add chain ip evil2 raw { type filter hook prerouting priority -300 ; }'
    nft add rule ip evil2 raw tcp dport 9080 notrack ;;
  output_nat_table) nft add table ip evil3
    nft 'add chain ip evil3 out { type nat hook output priority -101 ; }'
    nft add rule ip evil3 out tcp dport 9080 dnat to 172.18.0.9 ;;
  inet_table_named_nat) nft add table inet nat
    nft 'add chain inet nat PREROUTING { type nat hook prerouting priority -100 ; }'
    nft add rule inet nat PREROUTING tcp dport 9080 dnat ip to 172.18.0.5 ;;
  netdev_ingress) nft add table netdev evil4
    nft 'add chain netdev evil4 in { type filter hook ingress device lo priority -500 ; }'
    nft add rule netdev evil4 in tcp dport 9080 tcp dport set 15021 ;;
  base_chain_in_iptables_nat)
    nft 'add chain ip nat evil { type nat hook prerouting priority -101 ; }'
    nft add rule ip nat evil tcp dport 9080 dnat to 172.18.0.5 ;;
  native_rule_in_prerouting) nft insert rule ip nat PREROUTING tcp dport 9080 dnat to 172.18.0.5 ;;
  native_rule_in_docker_chain) nft add rule ip nat DOCKER_OUTPUT tcp dport 80 dnat to 10.0.0.1:80 ;;
  native_notrack_in_iptables_raw) nft add table ip raw
    nft 'add chain ip raw PREROUTING { type filter hook prerouting priority -300 ; }'
    nft add rule ip raw PREROUTING tcp dport 9080 notrack ;;
  docker_dns_nftables) printf 'table ip docker-dns {%s\n}\n' "$DOCKER_DNS" | nft -f - ;;
  docker_dns_nftables_abused) printf 'table ip docker-dns {%s\n}\n' "$DOCKER_DNS" | nft -f -
    nft add rule ip docker-dns dns-dnat tcp dport 9080 dnat to 10.0.0.1
    nft 'add chain ip docker-dns pre { type nat hook prerouting priority -101 ; }'
    nft add rule ip docker-dns pre tcp dport 9080 dnat to 172.18.0.5 ;;
  legacy_nat) iptables-legacy -t nat -I PREROUTING -p tcp --dport 9080 -j DNAT --to-destination 172.18.0.5 ;;
  legacy_raw) iptables-legacy -t raw -I PREROUTING -p tcp --dport 9080 -j CT --notrack ;;
  legacy_mangle) iptables-legacy -t mangle -N EVIL; iptables-legacy -t mangle -A PREROUTING -j EVIL
    iptables-legacy -t mangle -A EVIL -p tcp --dport 9080 -j MARK --set-mark 1 ;;
  legacy_docker_dns)  # a host whose Docker uses the legacy backend puts its DNS rules there: not a problem
    iptables-legacy-restore --noflush <<'R'
*nat
:DOCKER_OUTPUT - [0:0]
:DOCKER_POSTROUTING - [0:0]
-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT
-A POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING
-A DOCKER_OUTPUT -d 127.0.0.11/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 127.0.0.11:36541
-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.11:45439
-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p tcp -m tcp --sport 36541 -j SNAT --to-source :53
-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport 45439 -j SNAT --to-source :53
COMMIT
R
    ;;
  *) echo "unknown case $name" >&2; exit 2 ;;
esac
nft -j list ruleset > "$here/$name.json"
iptables-save | grep -v '^# \(Generated\|Completed\) ' > "$here/$name.save"
iptables-legacy-save | grep -v '^# \(Generated\|Completed\) ' > "$here/$name.legacy" || true
[ -s "$here/$name.legacy" ] || rm "$here/$name.legacy"
