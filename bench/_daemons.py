"""Start the two daemons a benchmark compares, each on sockets of its own.

aiovirtd runs as root with ``--root`` under a temporary directory.

Debian's libvirtd is started so that a libvirtd the machine already runs is
never touched, in one of two ways:

* ``system`` (like for like: the privileged daemon aiovirtd replaces): root's
  libvirtd in new mount and network namespaces, with /run, /var and
  /etc/libvirt covered by empty temporary directories. Without that it would
  share libvirt's state with the host's daemon (its QEMU driver locks a pid
  file in /run/libvirt/qemu) and could touch host networks and firewall; with
  no /run it also reaches no D-Bus, so no polkit, firewalld or machined.
  Its sockets live in the temporary directory (``unix_sock_dir``), which is
  all a client outside needs: Unix socket paths cross network namespaces.
* ``session``: the session daemon of the unprivileged user ``nobody``, with
  its own XDG directories: it cannot reach root's state at all, but starts
  fewer drivers, so it is leaner than the daemon aiovirtd replaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
START_TIMEOUT = 30.0


@dataclass
class Daemon:
    """A running daemon: where to connect and how to measure and stop it."""

    name: str
    uri: str
    sock: Path
    tmp: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name}: no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _wait_listening(d: Daemon) -> Daemon:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if d.proc.poll() is not None:
            log = d.log.read_text(errors="replace")
            d.stop()
            raise RuntimeError(f"{d.name} exited with {d.proc.returncode}:\n{log}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(d.sock))
            return d
        except OSError:
            if time.monotonic() > deadline:
                d.stop()
                raise TimeoutError(f"{d.name} did not listen on {d.sock}")
            time.sleep(0.02)


def start_aiovirtd() -> Daemon:
    # Byte-compiled first, as an installed package is: compiling at start would
    # leave the compiler's garbage in the heap that RSS measures.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "daemon", "drivers", "protocol",
                    "policy"], cwd=REPO, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="avb-", dir="/tmp"))
    sock = tmp / "run/libvirt/libvirt-sock"
    log = tmp / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--root", str(tmp)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
    return _wait_listening(Daemon("aiovirtd", f"qemu+unix:///system?socket={sock}",
                                  sock, tmp, proc, log))


def start_libvirtd(mode: str = "system", timeout: int = 600) -> Daemon:
    """Debian's libvirtd in ``mode`` (see above); ``--timeout`` ends it if we do not."""
    libvirtd = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
    if not os.path.exists(libvirtd):
        raise RuntimeError("libvirtd not found: apt-get install libvirt-daemon")
    tmp = Path(tempfile.mkdtemp(prefix="lvb-", dir="/tmp"))
    log = tmp / "daemon.log"
    if mode == "system":
        sock, argv, env = _system_libvirtd(tmp, libvirtd, timeout)
    else:
        sock, argv, env = _session_libvirtd(tmp, libvirtd, timeout)
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp, env=env)
    return _wait_listening(Daemon("libvirtd", f"qemu+unix:///{mode}?socket={sock}",
                                  sock, tmp, proc, log))


def _system_libvirtd(tmp: Path, libvirtd: str, timeout: int
                     ) -> tuple[Path, list[str], dict[str, str]]:
    for d in ("sock", "run", "var", "etc"):
        (tmp / d).mkdir()
    conf = tmp / "libvirtd.conf"
    conf.write_text(f'unix_sock_dir = "{tmp}/sock"\n'
                    'auth_unix_rw = "none"\nauth_unix_ro = "none"\n')
    # Guests run as root, as aiovirtd's do: Debian's default libvirt-qemu
    # user exists only where libvirt-daemon-system is installed.
    (tmp / "etc/qemu.conf").write_text('user = "root"\ngroup = "root"\n')
    script = (f"mount --bind {tmp}/run /run && mount --bind {tmp}/var /var && "
              f"mount --bind {tmp}/etc /etc/libvirt && "
              f'exec {libvirtd} -f {conf} -p {tmp}/libvirtd.pid --timeout {timeout}')
    argv = ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    return tmp / "sock/libvirt-sock", argv, env


def _session_libvirtd(tmp: Path, libvirtd: str, timeout: int
                      ) -> tuple[Path, list[str], dict[str, str]]:
    os.chown(tmp, NOBODY, NOBODY)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp),
        "XDG_RUNTIME_DIR": str(tmp / "run"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "LC_ALL": "C",
    }
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            libvirtd, "--timeout", str(timeout)]
    return tmp / "run/libvirt/libvirt-sock", argv, env
