"""Encode+decode cost of typical REMOTE messages with the generated codecs.

Run as ``.venv/bin/python bench/codec.py``. Prints microseconds per message
(encode, decode, both) for three messages a daemon sends all the time, the
same messages coded by hand on the ``xdrlib`` Packer/Unpacker (``xdrlib3``
when installed, else the standard library's copy: the same code), and the
import/compile cost of the REMOTE program. Results go in docs/xdr.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import timeit
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protocol import programs  # noqa: E402
from protocol.xdr import compile_files  # noqa: E402

try:
    import xdrlib3 as xdrlib  # type: ignore[import-not-found]
except ImportError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import xdrlib  # type: ignore[no-redef]
        except ImportError:  # Python >= 3.13
            xdrlib = None  # type: ignore[assignment]

REMOTE_FILES = [programs.DEFS / n for n in ("libvirt.x", "remote.x", "remote_domain.x")]
UUID = bytes(range(16))


def per_call_us(fn: Callable[[], Any], budget: float = 0.3) -> float:
    """Best of five runs, each about *budget*/5 seconds."""
    number = max(1, int(budget / 5 / max(timeit.timeit(fn, number=3) / 3, 1e-7)))
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


# -- the messages, with our codecs ------------------------------------------------------

def make_messages(r: Any, v: Any) -> dict[str, tuple[Callable, Callable, Any]]:
    """name -> (encode(value) -> bytes, decode(bytes) -> value, value)."""
    hdr_c = v.virNetMessageHeader_codec
    header = v.virNetMessageHeader(0x20008086, 1, 16, v.VIR_NET_REPLY, 42, v.VIR_NET_OK)
    info_c = r.remote_domain_get_info_ret_codec
    info = r.remote_domain_get_info_ret(1, 2 << 20, 1 << 20, 2, 123456789000)

    def enc_packet(value: Any) -> bytes:
        out = bytearray(4)
        hdr_c.pack(value[0], out)
        info_c.pack(value[1], out)
        out[0:4] = len(out).to_bytes(4, "big")
        return bytes(out)

    def dec_packet(data: bytes) -> Any:
        h, pos = hdr_c.unpack(data, 4)
        return h, info_c.decode(memoryview(data)[pos:])

    list_c = r.remote_connect_list_all_domains_ret_codec
    doms = r.remote_connect_list_all_domains_ret(
        [r.remote_nonnull_domain(f"guest-{i:03d}", UUID, i if i % 2 else -1)
         for i in range(100)], 100)

    params_c = r.remote_domain_get_job_stats_ret_codec
    kinds = [(r.VIR_TYPED_PARAM_INT, -5), (r.VIR_TYPED_PARAM_UINT, 7),
             (r.VIR_TYPED_PARAM_LLONG, -1 << 40), (r.VIR_TYPED_PARAM_ULLONG, 1 << 50),
             (r.VIR_TYPED_PARAM_DOUBLE, 0.25), (r.VIR_TYPED_PARAM_BOOLEAN, 1),
             (r.VIR_TYPED_PARAM_STRING, "some string value")]
    params = r.remote_domain_get_job_stats_ret(
        2, [r.remote_typed_param(f"param.{i}", kinds[i % 7]) for i in range(20)])

    return {
        "header + domain_get_info_ret": (enc_packet, dec_packet, (header, info)),
        "list_all_domains_ret, 100 domains": (list_c.encode, list_c.decode, doms),
        "get_job_stats_ret, 20 typed params": (params_c.encode, params_c.decode, params),
    }


# -- the same messages on xdrlib (hand-written: the best a primitive layer allows) --------

def make_xdrlib_messages(r: Any) -> dict[str, tuple[Callable, Callable]]:
    if xdrlib is None:
        return {}
    Packer, Unpacker = xdrlib.Packer, xdrlib.Unpacker

    def enc_packet(value: Any) -> bytes:
        h, i = value
        p = Packer()
        p.pack_uint(h.prog)
        p.pack_uint(h.vers)
        p.pack_int(h.proc)
        p.pack_int(h.type)
        p.pack_uint(h.serial)
        p.pack_int(h.status)
        p.pack_uint(i.state)
        p.pack_uhyper(i.maxMem)
        p.pack_uhyper(i.memory)
        p.pack_uint(i.nrVirtCpu)
        p.pack_uhyper(i.cpuTime)
        body = p.get_buffer()
        return (len(body) + 4).to_bytes(4, "big") + body

    def dec_packet(data: bytes) -> Any:
        u = Unpacker(data[4:])
        h = (u.unpack_uint(), u.unpack_uint(), u.unpack_int(), u.unpack_int(),
             u.unpack_uint(), u.unpack_int())
        i = r.remote_domain_get_info_ret(u.unpack_uint(), u.unpack_uhyper(),
                                         u.unpack_uhyper(), u.unpack_uint(),
                                         u.unpack_uhyper())
        u.done()
        return h, i

    def pack_dom(p: Any, d: Any) -> None:
        p.pack_string(d.name.encode())
        p.pack_fopaque(16, d.uuid)
        p.pack_int(d.id)

    def unpack_dom(u: Any) -> Any:
        return r.remote_nonnull_domain(u.unpack_string().decode(), u.unpack_fopaque(16),
                                       u.unpack_int())

    def enc_list(v: Any) -> bytes:
        p = Packer()
        p.pack_array(v.domains, lambda d: pack_dom(p, d))
        p.pack_uint(v.ret)
        return p.get_buffer()

    def dec_list(data: bytes) -> Any:
        u = Unpacker(data)
        v = r.remote_connect_list_all_domains_ret(u.unpack_array(lambda: unpack_dom(u)),
                                                  u.unpack_uint())
        u.done()
        return v

    pack_arm = {1: "pack_int", 2: "pack_uint", 3: "pack_hyper", 4: "pack_uhyper",
                5: "pack_double", 6: "pack_int"}
    unpack_arm = {k: "un" + v for k, v in pack_arm.items()}

    def enc_params(v: Any) -> bytes:
        p = Packer()
        p.pack_int(v.type)

        def one(tp: Any) -> None:
            p.pack_string(tp.field.encode())
            kind, val = tp.value
            p.pack_int(kind)
            if kind == 7:
                p.pack_string(val.encode())
            else:
                getattr(p, pack_arm[kind])(val)
        p.pack_array(v.params, one)
        return p.get_buffer()

    def dec_params(data: bytes) -> Any:
        u = Unpacker(data)

        def one() -> Any:
            field = u.unpack_string().decode()
            kind = u.unpack_int()
            val = u.unpack_string().decode() if kind == 7 else getattr(u, unpack_arm[kind])()
            return r.remote_typed_param(field, (kind, val))
        v = r.remote_domain_get_job_stats_ret(u.unpack_int(), u.unpack_array(one))
        u.done()
        return v

    return {
        "header + domain_get_info_ret": (enc_packet, dec_packet),
        "list_all_domains_ret, 100 domains": (enc_list, dec_list),
        "get_job_stats_ret, 20 typed params": (enc_params, dec_params),
    }


# -- start-up cost -------------------------------------------------------------------------

_STARTUP = """
import asyncio, os, sys, time  # asyncio: the daemon's own baseline (ssl, typing, ...)
sys.path.insert(0, {root!r})
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
r0 = rss(); t0 = time.perf_counter()
from protocol.xdr import compile_files
m = compile_files({files!r}, 'remote', cache={cache})
t1 = time.perf_counter(); r1 = rss()
m.remote_domain_get_info_ret_codec, m.remote_connect_list_all_domains_ret_codec
t2 = time.perf_counter()
m.__xdr_materialize_all__()
t3 = time.perf_counter(); r3 = rss()
print(f"{{(t1 - t0) * 1e3:.1f}} {{r1 - r0:.1f}} {{(t2 - t1) * 1e3:.2f}}",
      f"{{(t3 - t2) * 1e3:.0f}} {{r3 - r1:.1f}} {{len(m.__xdr_types__)}}")
"""


def startup(cache: bool) -> list[str]:
    """Cost of the REMOTE unit in a fresh interpreter that has already imported asyncio."""
    code = _STARTUP.format(root=str(ROOT), files=[str(f) for f in REMOTE_FILES], cache=cache)
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env=os.environ).stdout.split()


def main() -> None:
    r = compile_files(REMOTE_FILES, "remote")
    v = programs.virnet()
    ours = make_messages(r, v)
    theirs = make_xdrlib_messages(r)
    lib = getattr(xdrlib, "__name__", "none") if xdrlib else "none"
    print(f"{'message':38} {'enc µs':>8} {'dec µs':>8} {'total':>8}   "
          f"{lib + ' total':>14}  speed-up")
    for name, (enc, dec, value) in ours.items():
        data = enc(value)
        assert dec(data) == value, name
        e = per_call_us(lambda enc=enc, value=value: enc(value))
        d = per_call_us(lambda dec=dec, data=data: dec(data))
        line = f"{name:38} {e:8.2f} {d:8.2f} {e + d:8.2f}"
        if name in theirs:
            xenc, xdec = theirs[name]
            assert xenc(value) == data, f"xdrlib encoding of {name} differs"
            xdec(data)
            x = (per_call_us(lambda xenc=xenc, value=value: xenc(value))
                 + per_call_us(lambda xdec=xdec, data=data: xdec(data)))
            line += f"   {x:14.2f}  {x / (e + d):6.1f}x"
        print(line)
    for cache in (True, False):
        t, rss, first, full, full_rss, n = startup(cache)
        label = "cached" if cache else "no cache"
        print(f"REMOTE unit ({n} types), {label}: import+load {t} ms (+{rss} MiB RSS), "
              f"first two types {first} ms; all types {full} ms (+{full_rss} MiB)")


if __name__ == "__main__":
    main()
