#!/bin/sh
# A stand-in for qemu-ga, just enough for the tests of the host's agent client:
# it answers on the org.qemu.guest_agent.0 virtio port, one JSON command a line,
# for the few commands below. Anything else gets qemu-ga's CommandNotFound.
name=org.qemu.guest_agent.0
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = "$name" ] && port=/dev/${p##*/}
done
[ -n "$port" ] || exit 0   # no agent channel in this guest's definition
exec 3<>"$port"
# "silentagent" on the kernel command line: the port is open, nobody answers.
grep -qw silentagent /proc/cmdline && exec sleep 2147483647

# The value of "key" in a one-line JSON object: a string or a bare number.
field() {
    printf '%s' "$1" | sed -n "s/.*\"$2\" *: *\"\{0,1\}\([^\",}]*\).*/\1/p"
}

interfaces() {
    sep=
    printf '{"return": ['
    for dev in /sys/class/net/*; do
        ifname=${dev##*/}
        printf '%s{"name": "%s", "hardware-address": "%s", "ip-addresses": [' \
            "$sep" "$ifname" "$(cat "$dev/address")"
        ip -o -4 addr show dev "$ifname" | awk '{
            split($4, a, "/")
            printf "%s{\"ip-address-type\": \"ipv4\", \"ip-address\": \"%s\", \"prefix\": %s}",
                (n++ ? ", " : ""), a[1], a[2]
        }'
        printf ']}'
        sep=', '
    done
    printf ']}\n'
}

serve() {
    while read -r line <&3; do
        answer "$line"
    done
}

answer() {
    line=$1
    cmd=$(field "$line" execute)
    case $cmd in
    guest-sync-delimited) printf '\377{"return": %s}\n' "$(field "$line" id)" >&3 ;;
    guest-sync) printf '{"return": %s}\n' "$(field "$line" id)" >&3 ;;
    guest-ping) echo '{"return": {}}' >&3 ;;
    guest-get-host-name) printf '{"return": {"host-name": "%s"}}\n' "$(hostname)" >&3 ;;
    guest-get-time) printf '{"return": %s}\n' "$(date +%s)000000000" >&3 ;;
    guest-set-time)
        ns=$(field "$line" time)
        [ -n "$ns" ] && date -s "@${ns%?????????}" >/dev/null
        echo '{"return": {}}' >&3 ;;
    guest-network-get-interfaces) interfaces >&3 ;;
    guest-shutdown)
        # qemu-ga does not answer this one: the guest just goes.
        case $(field "$line" mode) in
        reboot) reboot -f ;;
        halt) halt -f ;;
        *) poweroff -f ;;
        esac ;;
    *) printf '{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}}\n' \
           "$cmd" >&3 ;;
    esac
}

# The port reads as empty while nobody is connected on the host side: keep
# it open (that is what the host sees as the agent being there) and retry.
while :; do
    serve
    sleep 0.2
done
