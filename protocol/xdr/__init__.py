"""XDR compiler: RFC 4506 plus the rpcgen forms in libvirt's ``.x`` files, to Python codecs.

``compile_files(paths, name)`` parses the files as one unit and returns a module
with constants, enum dicts, struct classes and ``T_codec`` objects (see
docs/architecture.md "Codec API" and docs/xdr.md). The generated source is
cached on disk, keyed by the sources and the generator version; on a cache hit
neither the parser nor the generator is imported.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import types

from .runtime import GENERATED_VERSION, Codec, CompileError, XDRError, build_module

__all__ = ["CompileError", "Codec", "XDRError", "compile_files", "compile_text"]


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "aiovirtd")


def _compile(sources: list[tuple[str, str]]) -> tuple:
    from .codegen import generate
    from .parser import parse

    defs = []
    for text, path in sources:
        defs.extend(parse(text, path))
    return generate(defs)


def _load_cached(sources: list[tuple[str, str]], name: str, cache: bool) -> tuple:
    if not cache:
        return _compile(sources)
    h = hashlib.sha256(GENERATED_VERSION.encode())
    for text, path in sources:
        h.update(b"\0" + os.path.basename(path).encode() + b"\0" + text.encode())
    stem = "xdr-" + "".join(c if c.isalnum() else "_" for c in name)
    directory = _cache_dir()
    path = os.path.join(directory, f"{stem}-{h.hexdigest()[:32]}.marshal")
    try:
        with open(path, "rb") as f:
            return tuple(marshal.load(f))
    except (OSError, ValueError, EOFError, TypeError):
        pass
    unit = _compile(sources)
    try:  # best effort: an unwritable cache only costs compile time
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            marshal.dump(unit, f)
        os.replace(tmp, path)
        for entry in os.listdir(directory):
            if entry.startswith(stem + "-") and entry.endswith(".marshal") and \
                    os.path.join(directory, entry) != path:
                os.unlink(os.path.join(directory, entry))
    except OSError:
        pass
    return unit


def compile_files(paths: list[str | os.PathLike], name: str, *,
                  cache: bool = True) -> types.ModuleType:
    """Compile XDR files, in order, as one unit into a module called *name*."""
    sources = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            sources.append((f.read(), str(p)))
    return build_module(_load_cached(sources, name, cache), name)


def compile_text(text: str, name: str = "xdr", path: str = "<string>") -> types.ModuleType:
    """Compile XDR source given as a string (no cache); mainly for tests and tools."""
    return build_module(_compile([(text, path)]), name)
