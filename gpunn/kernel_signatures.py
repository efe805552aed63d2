"""Kernel signatures parsed from the ``.cu`` sources: the single record of each entry point's
parameters, used to check launch arguments (emulated and real: :func:`make_checker`), to
marshal Python numbers into the declared C types (``gpunn.kernels.Kernel.launch``), and to
generate the emulator's C++ launch wrappers (gpunn/testing/cuda_emu).

The argument rules: a pointer takes a C-contiguous array of the element dtype; a scalar takes
the exact NumPy scalar type (``numpy.int32`` for ``int``, ``numpy.float32`` for ``float``).
A Python ``int`` or ``float`` is refused: CuPy would pass it as 64 bits and an ``int`` /
``float`` parameter would read garbage on a GPU.

Only ``extern "C" __global__ void name(...)`` entry points are accepted (docs/KERNELS.md); a
``__global__`` function in any other form is reported as an error rather than skipped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Param", "KernelSig", "parse_kernels", "parse_source", "strip_comments",
           "global_function_names", "SignatureError", "CTYPE_DTYPES", "ArgumentTypeError",
           "check_args", "make_checker", "describe"]


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


# -- checking launch arguments against a signature --------------------------------------------
class ArgumentTypeError(TypeError):
    """A launch argument does not match the kernel's parameter type exactly."""


def describe(v) -> str:
    if isinstance(v, np.ndarray):
        return f"numpy array {v.dtype} {v.shape}"
    return f"{type(v).__module__}.{type(v).__qualname__} {v!r}"


def check_args(sig: KernelSig, args, *, array_type=np.ndarray) -> None:
    """Raise :class:`ArgumentTypeError` unless ``args`` fit ``sig`` exactly (see module doc)."""
    if not isinstance(args, (tuple, list)):
        raise ArgumentTypeError(f"{sig.name}: args must be a tuple, got {type(args).__name__}")
    if len(args) != len(sig.params):
        raise ArgumentTypeError(f"{sig.name} takes {len(sig.params)} arguments "
                                f"({', '.join(str(p) for p in sig.params)}), got {len(args)}")
    for k, (p, a) in enumerate(zip(sig.params, args)):
        where = f"{sig.name}: argument {k} ({p})"
        if p.pointer:
            if not isinstance(a, array_type):
                raise ArgumentTypeError(f"{where} needs an array of {p.dtype}, got {describe(a)}")
            if a.dtype != p.dtype:
                raise ArgumentTypeError(f"{where} needs dtype {p.dtype}, got {a.dtype}")
            if not a.flags.c_contiguous:
                raise ArgumentTypeError(f"{where} needs a C-contiguous array (a kernel sees only "
                                        "the data pointer); pass ascontiguousarray(...)")
        else:
            if type(a) is not p.dtype.type:
                hint = (" (cupy.RawKernel sends a Python int as 64-bit and a float as double, "
                        "whatever the parameter's type: pass explicit NumPy scalars)"
                        if isinstance(a, (int, float, bool)) else "")
                raise ArgumentTypeError(f"{where} needs numpy.{p.dtype.name}(...), got "
                                        f"{describe(a)}{hint}")


def make_checker(sig: KernelSig, *, array_type=np.ndarray, contiguity: bool = True):
    """A fast ``check(args)`` for launches: the same rules as :func:`check_args`, with the
    expected types precomputed (about a microsecond for a few arguments); on any mismatch it
    defers to :func:`check_args` for the message. ``contiguity=False`` skips C-contiguity."""
    ptrs = tuple((i, p.dtype) for i, p in enumerate(sig.params) if p.pointer)
    scalars = tuple((i, p.dtype.type) for i, p in enumerate(sig.params) if not p.pointer)
    n = len(sig.params)
    # cupy.ndarray keeps its contiguity as a plain attribute; .flags builds an object per call
    fast_flag = isinstance(getattr(array_type, "_c_contiguous", None), type(np.ndarray.ndim))

    def ok(args) -> bool:
        if len(args) != n:
            return False
        for i, t in scalars:
            if type(args[i]) is not t:
                return False
        for i, dt in ptrs:
            a = args[i]
            if type(a) is not array_type or a.dtype != dt:
                return False
            if contiguity and not (a._c_contiguous if fast_flag else a.flags.c_contiguous):
                return False
        return True

    def check(args):
        try:
            if ok(args):
                return
        except TypeError:
            pass
        check_args(sig, args, array_type=array_type)
        raise ArgumentTypeError(f"{sig.name}: arguments do not match {sig} (an array subclass?)")

    return check
