#!/bin/sh
# udhcpc's hook in the test guest: put the leased address on the interface and
# say so on the console, where tests wait for it.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "aiovirtd-test-guest: $interface has $ip" >/dev/console
    ;;
esac
exit 0
