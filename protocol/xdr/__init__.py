"""XDR compiler: RFC 4506 plus the rpcgen forms in libvirt's ``.x`` files, to Python codecs.

``compile_files(paths, name)`` parses the files as one unit and returns a module
with constants, enum dicts, struct classes and ``T_codec`` objects (see
docs/architecture.md "Codec API" and docs/xdr.md). The generated source is
cached on disk, keyed by the sources and the compiler version.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import tempfile
import types
from pathlib import Path

from .codegen import COMPILER_VERSION, CompiledUnit, generate
from .lexer import CompileError
from .parser import parse
from .runtime import Codec, XDRError, build_module

__all__ = ["CompileError", "Codec", "XDRError", "compile_files", "compile_text"]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aiovirtd"


def _compile(sources: list[tuple[str, str]]) -> CompiledUnit:
    defs = []
    for text, path in sources:
        defs.extend(parse(text, path))
    return generate(defs)


def _load_cached(sources: list[tuple[str, str]], name: str, cache: bool) -> CompiledUnit:
    if not cache:
        return _compile(sources)
    h = hashlib.sha256(COMPILER_VERSION.encode())
    for text, path in sources:
        h.update(b"\0" + os.path.basename(path).encode() + b"\0" + text.encode())
    stem = "xdr-" + "".join(c if c.isalnum() else "_" for c in name)
    path = _cache_dir() / f"{stem}-{h.hexdigest()[:32]}.marshal"
    try:
        return CompiledUnit.from_data(marshal.loads(path.read_bytes()))
    except (OSError, ValueError, EOFError, TypeError):
        pass
    unit = _compile(sources)
    try:  # best effort: an unwritable cache only costs compile time
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".xdr-")
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps(unit.to_data()))
        os.replace(tmp, path)
        for stale in path.parent.glob(f"{stem}-*.marshal"):
            if stale != path:
                stale.unlink(missing_ok=True)
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
