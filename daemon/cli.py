"""``aiovirtd``: command line, logging, pid file, signals and idle exit."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path

from daemon.config import Config, ConfigError
from daemon.paths import Paths
from daemon.server import Server

VERSION = "9.0.0"

log = logging.getLogger("daemon")

# libvirt log levels: 1 debug, 2 info, 3 warning, 4 error.
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aiovirtd",
                                description="A libvirtd-compatible virtualization daemon.")
    p.add_argument("--root", metavar="DIR", type=Path, default=Path("/"),
                   help="keep every file below DIR instead of / (tests, side-by-side runs)")
    p.add_argument("-f", "--config", metavar="FILE", type=Path,
                   help="configuration file (default: etc/libvirt/libvirtd.conf below the root)")
    p.add_argument("-t", "--timeout", metavar="SECS", type=int, default=0,
                   help="exit after SECS seconds without clients or running guests")
    p.add_argument("-p", "--pid-file", metavar="FILE", type=Path,
                   help="pid file (default: run/libvirtd.pid below the root)")
    p.add_argument("-v", "--verbose", action="store_true", help="log more to stderr")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s (libvirt) {VERSION}")
    return p.parse_args(argv)


def setup_logging(config: Config, verbose: bool) -> None:
    level = _LEVELS.get(config.log_level, logging.WARNING)
    if verbose:
        level = min(level, logging.INFO)
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(process)d: %(levelname)s : %(name)s: %(message)s")
    handlers: list[logging.Handler] = []
    for output in config.log_outputs.split():
        prio, _, rest = output.partition(":")
        kind, _, arg = rest.partition(":")
        if kind == "file" and arg:
            Path(arg).parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(arg)
        elif kind == "syslog":
            # logging.handlers pulls in pickle: imported only when syslog is asked for
            from logging.handlers import SysLogHandler

            handler = SysLogHandler("/dev/log")
        elif kind in ("stderr", "journald"):
            handler = logging.StreamHandler(sys.stderr)
        else:
            continue
        if prio.isdigit():
            handler.setLevel(_LEVELS.get(int(prio), logging.WARNING))
        handlers.append(handler)
    if not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)


class PidFile:
    """A locked pid file: a second daemon on the same root refuses to start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OSError(f"Failed to acquire pid file '{self.path}': "
                          f"another daemon is running") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = -1


async def serve(server: Server, timeout: int) -> None:
    """Run until SIGTERM/SIGINT, or until idle for ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP ignored"))
    await server.start()
    print(f"aiovirtd: ready; connect with: virsh -c "
          f"'qemu+unix:///system?socket={server.rw_socket}'", file=sys.stderr, flush=True)
    try:
        if timeout > 0:
            idle_for = 0
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 1)
                except TimeoutError:
                    idle_for = idle_for + 1 if server.idle() else 0
                    if idle_for >= timeout:
                        log.info("idle for %d seconds, exiting", timeout)
                        break
        else:
            await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = Paths(root=args.root.resolve())
    config_file = args.config or (paths.config_file if paths.config_file.exists() else None)
    try:
        config = Config.load(config_file) if config_file else Config()
    except ConfigError as e:
        print(f"aiovirtd: {e}", file=sys.stderr)
        return 1
    setup_logging(config, args.verbose)
    pid_file = PidFile(args.pid_file or paths.pid_file)
    try:
        pid_file.acquire()
    except OSError as e:
        print(f"aiovirtd: {e}", file=sys.stderr)
        return 1
    server = Server(config, paths)
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve(server, args.timeout))
        else:
            uvloop.run(serve(server, args.timeout))
    except OSError as e:
        print(f"aiovirtd: {e}", file=sys.stderr)
        return 1
    except Exception:
        log.exception("aiovirtd failed")
        return 1
    finally:
        pid_file.release()
    return 0
