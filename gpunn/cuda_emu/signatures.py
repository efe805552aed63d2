"""Kernel signatures parsed from the ``.cu`` sources: the single record of each entry point's
parameters, used to check launch arguments (emulated and real), to marshal Python numbers
into the declared C types, and to generate the emulator's C++ launch wrappers.

Only ``extern "C" __global__ void name(...)`` entry points are accepted (docs/KERNELS.md); a
``__global__`` function in any other form is reported as an error rather than skipped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Param", "KernelSig", "parse_kernels", "parse_source", "strip_comments",
           "global_function_names", "SignatureError", "CTYPE_DTYPES"]


class SignatureError(ValueError):
    """A kernel signature the parser (and so the emulator and the checks) cannot accept."""


# C parameter type -> NumPy dtype (for pointers: the element type; for scalars: the exact
# NumPy scalar type an argument must have).
CTYPE_DTYPES = {
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
    "int": np.dtype(np.int32),
    "unsigned int": np.dtype(np.uint32),
    "long long": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64),
}
_CTYPE_ALIASES = {
    "signed int": "int", "unsigned": "unsigned int", "long long int": "long long",
    "signed long long": "long long", "unsigned long long int": "unsigned long long",
}


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str            # normalised base type, e.g. "float", "long long"
    pointer: bool
    const: bool           # for pointers: points to const data (the kernel only reads it)

    @property
    def dtype(self) -> np.dtype:
        return CTYPE_DTYPES[self.ctype]

    @property
    def decl(self) -> str:
        """The C type as a declaration would spell it: ``const float*``, ``int``."""
        if self.pointer:
            return ("const " if self.const else "") + self.ctype + "*"
        return self.ctype

    def __str__(self) -> str:
        return f"{self.decl} {self.name}"


@dataclass(frozen=True)
class KernelSig:
    name: str
    file: str             # the .cu file's name, e.g. "elementwise.cu"
    params: tuple

    def __str__(self) -> str:
        return f"{self.name}({', '.join(str(p) for p in self.params)})"


def strip_comments(src: str) -> str:
    """Remove // and /* */ comments (keeping line breaks so positions still count lines)."""
    src = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


_ENTRY = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s+)?void\s+(\w+)\s*\(([^)]*)\)')
_ANY_GLOBAL = re.compile(r"__global__[^;{(]*?(\w+)\s*\(")


def global_function_names(src: str) -> list:
    """Names of every ``__global__`` function in ``src``, whatever its form."""
    clean = re.sub(r"__launch_bounds__\s*\([^)]*\)", " ", strip_comments(src))
    return _ANY_GLOBAL.findall(clean)


def _parse_param(text: str, kernel: str, file: str) -> Param:
    t = " ".join(text.replace("__restrict__", " ").replace("*", " * ").split())
    tokens = t.split(" ")
    if len(tokens) < 2 or not re.fullmatch(r"[A-Za-z_]\w*", tokens[-1]):
        raise SignatureError(f"{file}: kernel {kernel}: cannot read parameter {text.strip()!r} "
                             "(write 'type name', e.g. 'const float* x')")
    name, tokens = tokens[-1], tokens[:-1]
    stars = tokens.count("*")
    if stars > 1:
        raise SignatureError(f"{file}: kernel {kernel}: parameter {name!r} is a pointer to a "
                             "pointer; only flat arrays and scalars are supported")
    pointer = stars == 1
    if pointer:
        star = tokens.index("*")
        if "const" in tokens[star + 1:]:
            tokens = tokens[:star + 1] + [x for x in tokens[star + 1:] if x != "const"]
        const = "const" in tokens[:star]
        base = [x for x in tokens[:star] if x != "const"]
    else:
        const = "const" in tokens
        base = [x for x in tokens if x != "const"]
    ctype = " ".join(base)
    ctype = _CTYPE_ALIASES.get(ctype, ctype)
    if ctype not in CTYPE_DTYPES:
        raise SignatureError(f"{file}: kernel {kernel}: parameter {name!r} has type {ctype!r}; "
                             f"supported: {', '.join(CTYPE_DTYPES)} (and pointers to them)")
    return Param(name=name, ctype=ctype, pointer=pointer, const=const if pointer else False)


def parse_source(src: str, file: str = "<source>") -> dict:
    """``{name: KernelSig}`` for every ``extern "C" __global__`` entry point in ``src``, in order.

    Raises :class:`SignatureError` for a ``__global__`` function that is not such an entry
    point (a template kernel, say) or whose parameters the emulator cannot pass.
    """
    clean = strip_comments(src)
    found = {}
    for m in _ENTRY.finditer(clean):
        name, plist = m.group(1), m.group(2).strip()
        if name in found:
            raise SignatureError(f"{file}: kernel {name} is defined twice")
        params = () if plist in ("", "void") else tuple(
            _parse_param(p, name, file) for p in plist.split(","))
        found[name] = KernelSig(name=name, file=file, params=params)
    stray = [n for n in global_function_names(clean) if n not in found]
    if stray:
        raise SignatureError(f"{file}: __global__ function(s) {', '.join(stray)} are not "
                             "'extern \"C\" __global__ void name(...)' entry points")
    return found


def parse_kernels(path) -> dict:
    """:func:`parse_source` on a ``.cu`` file."""
    path = Path(path)
    return parse_source(path.read_text(), file=path.name)
