"""RPC throughput and memory of aiovirtd against Debian's libvirtd 9.0.

Both daemons are started here, each on its own sockets (see _daemons.py),
and driven by libvirt-python: calls per second on one connection and summed
over concurrent connections (one process each), and the daemon's RSS idle and
with 100 defined domains. Run it with ``make bench`` or
``.venv/bin/python bench/rpc.py [--seconds S] [--clients N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _daemons import Daemon, start_aiovirtd, start_libvirtd  # noqa: E402

DOMAINS = 100
DOMAIN_XML = """<domain type='qemu'>
  <name>bench-{i:03d}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
</domain>
"""
OPS = ("getLibVersion", "listAllDomains", "dom.info", "dom.XMLDesc")


def _quiet_libvirt() -> Any:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _operation(conn: Any, op: str) -> Callable[[], object]:
    if op == "getLibVersion":
        return conn.getLibVersion
    if op == "listAllDomains":
        return conn.listAllDomains
    dom = conn.lookupByName("bench-000")
    return dom.info if op == "dom.info" else dom.XMLDesc


def run_loop(uri: str, op: str, seconds: float, start_at: float | None = None) -> int:
    """Calls of ``op`` completed on one fresh connection within ``seconds``."""
    conn = _quiet_libvirt().open(uri)
    try:
        call = _operation(conn, op)
        if start_at is not None:
            time.sleep(max(0.0, start_at - time.time()))
        count = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            call()
            count += 1
        return count
    finally:
        conn.close()


def _worker(uri: str, op: str, seconds: float, start_at: float, out: Any) -> None:
    try:
        out.put(run_loop(uri, op, seconds, start_at))
    except Exception as exc:  # reported by the parent, which owns the table
        out.put(f"{type(exc).__name__}: {exc}")


def run_concurrent(uri: str, op: str, seconds: float, clients: int) -> int:
    """Summed calls of ``clients`` processes, each with its own connection.

    The processes start their loops at one wall-clock instant, after all
    have connected, so the sum covers the same window.
    """
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 2.0 + 0.1 * clients
    procs = [ctx.Process(target=_worker, args=(uri, op, seconds, start_at, out))
             for _ in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(10)
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        raise RuntimeError(errors[0])
    return sum(results)


def define_domains(uri: str) -> None:
    conn = _quiet_libvirt().open(uri)
    try:
        for i in range(DOMAINS):
            conn.defineXML(DOMAIN_XML.format(i=i))
        assert len(conn.listAllDomains()) == DOMAINS
    finally:
        conn.close()


def first_client(uri: str) -> None:
    """What a first `virsh` session asks: capabilities and the domain list."""
    conn = _quiet_libvirt().open(uri)
    try:
        conn.getCapabilities()
        conn.listAllDomains()
    finally:
        conn.close()


def _try(label: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        return f"error: {type(exc).__name__}"


def measure(daemons: list[Daemon], seconds: float, clients: int) -> dict[str, dict[str, float | str]]:
    """Every row of the table for each daemon.

    The daemons take turns run by run, so a change in the load of the
    (shared) machine falls on both alike.
    """
    res: dict[str, dict[str, float | str]] = {d.name: {} for d in daemons}
    time.sleep(1.0)
    for d in daemons:
        res[d.name]["RSS idle after start (MiB)"] = d.rss_kib() / 1024
    # libvirtd probes QEMU only when a client first needs it; this row compares
    # the two once both have done their start-up work.
    for d in daemons:
        _try(f"{d.name} first client", lambda: first_client(d.uri))
    time.sleep(1.0)
    for d in daemons:
        res[d.name]["RSS idle after a first client (MiB)"] = d.rss_kib() / 1024
    for d in daemons:
        _try(f"{d.name} define", lambda: define_domains(d.uri))
    time.sleep(0.5)
    for d in daemons:
        res[d.name][f"RSS with {DOMAINS} domains (MiB)"] = d.rss_kib() / 1024
    for op in OPS:
        for n in (1, clients):
            label = f"{op}/s, {n} conn{'s' if n > 1 else ''}"
            for d in daemons:
                res[d.name][label] = _try(f"{d.name} {label}", lambda: (
                    run_loop(d.uri, op, seconds) if n == 1
                    else run_concurrent(d.uri, op, seconds, n)) / seconds)
    for d in daemons:
        res[d.name]["RSS after the runs (MiB)"] = d.rss_kib() / 1024
    return res


def fmt(v: float | str | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def table(ours: dict[str, float | str], theirs: dict[str, float | str]) -> str:
    rows = [("", "aiovirtd", "libvirtd", "ratio")]
    for key in dict.fromkeys([*theirs, *ours]):
        a, b = ours.get(key), theirs.get(key)
        ratio = "-"
        if isinstance(a, float) and isinstance(b, float) and a and b:
            ratio = f"{b / a:.2f}" if key.startswith("RSS") else f"{a / b:.2f}"
        rows.append((key, fmt(a), fmt(b), ratio))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each timed run")
    ap.add_argument("--clients", type=int, default=8, help="concurrent connections")
    ap.add_argument("--libvirtd", choices=("system", "session"), default="system",
                    help="how the reference libvirtd runs (see bench/_daemons.py)")
    args = ap.parse_args()

    t0 = time.monotonic()
    daemons = []
    # Namespaces need CAP_SYS_ADMIN and a mounted root (not a chroot or a
    # locked-down container); the session daemon needs neither.
    modes = [args.libvirtd] + (["session"] if args.libvirtd == "system" else [])
    try:
        for mode in modes:
            try:
                daemons.append(start_libvirtd(mode))
                args.libvirtd = mode
                break
            except Exception as exc:
                print(f"could not start libvirtd ({mode}): {exc}", file=sys.stderr)
        try:
            daemons.append(start_aiovirtd())
        except Exception as exc:
            print(f"could not start: {exc}", file=sys.stderr)
        res = measure(daemons, args.seconds, args.clients)
    finally:
        for d in daemons:
            d.stop()
    ours, theirs = res.get("aiovirtd", {}), res.get("libvirtd", {})
    print(table(ours, theirs))
    print("\nratio: calls/s aiovirtd/libvirtd, RSS libvirtd/aiovirtd; >= 1.00 favours aiovirtd.")
    print(f"libvirtd: Debian's, {args.libvirtd} daemon; {args.seconds:g} s per run; "
          f"{time.monotonic() - t0:.0f} s in all.")
    return 0 if ours and theirs else 1


if __name__ == "__main__":
    sys.exit(main())
