#!/bin/sh
# PID 1 of the aiovirtd test guest: the least userland that lets tests drive
# the guest through QEMU - a shell on the serial console, and an ACPI power
# button that really powers off.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root PS1='guest# '
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Dependencies come first in this list (worked out at build time).
while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "aiovirtd-test-guest: insmod $m failed"
done </etc/modules
# button + evdev give acpid the power button; /etc/acpi/PWRF/00000080 acts on it.
acpid
ip link set lo up
hostname tiny
# A small guest agent on org.qemu.guest_agent.0, if the guest has that channel
# and the kernel command line does not say "noagent" (a guest whose agent is
# silent).
grep -qw noagent /proc/cmdline || aiovirtd-agent &
# "dhcp" on the kernel command line: ask for an address on eth0 (a libvirt network's
# dnsmasq) in the background; the hook prints it on the console.
grep -qw dhcp /proc/cmdline && udhcpc -f -i eth0 -s /usr/share/udhcpc/default.script -x hostname:tiny -T 1 -t 5 -A 2 >/dev/null 2>&1 &
echo "aiovirtd-test-guest ready"
# setsid + cttyhack make ttyS0 the shell's controlling terminal, so Ctrl-C
# works and job control is on; the loop brings a new shell when one exits.
while :; do
    setsid cttyhack sh
done
