"""Kubernetes quantities: CPU cores and memory bytes parsed exactly, and shown in words."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from .errors import show as _show
from .errors import type_name as _type_name

# A Kubernetes quantity without a sign: digits with an optional fraction, then a binary or
# decimal SI suffix or a (short) decimal exponent. No spaces, no "inf"/"nan", no "1_000".
_QUANTITY_RE = re.compile(
    r"(?P<number>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?[0-9]{1,3}))?",
    re.ASCII,
)
_MAX_QUANTITY_LENGTH = 64
_MAX_MEMORY = 2**63 - 1
_SUFFIXES = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def _quantity(text: str) -> Decimal:
    """A non-negative Kubernetes quantity string as an exact Decimal; ValueError if malformed."""
    if len(text) > _MAX_QUANTITY_LENGTH:
        raise ValueError(f"quantity {_show(text)} is too long")
    match = _QUANTITY_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{_show(text)} is not a quantity like '2', '500m', '1.5Gi' or '512Mi'")
    number = Decimal(match["number"])
    if match["exponent"] is not None:
        return number.scaleb(int(match["exponent"]))
    return number * _SUFFIXES[match["suffix"]]


def parse_cpu(value: str | int | float) -> float:
    """CPU cores from ``"500m"``, ``"2"``, ``"1.5"``, ``2`` or ``0.5``; ValueError if malformed.

    Zero is accepted here (a size may guarantee no CPU); negative, infinite and NaN values,
    booleans and other types are not.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"CPU must be a quantity string or a number, got {_type_name(value)}")
    if isinstance(value, str):
        cores = float(_quantity(value))
    else:
        try:
            cores = float(value)
        except OverflowError:
            raise ValueError(f"CPU {_show(value)} is out of range") from None
    if not math.isfinite(cores):
        raise ValueError(f"CPU {_show(value)} is out of range")
    if cores < 0:
        raise ValueError(f"CPU must not be negative, got {_show(value)}")
    return cores


def parse_memory(value: str | int) -> int:
    """Bytes from a Kubernetes quantity (``"512Mi"``, ``"2G"``, ``"1.5Gi"``) or an int.

    Fractional bytes are rounded up as Kubernetes does. Negative values, floats, booleans and
    other types raise ValueError.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(
            f"memory must be a quantity string or an integer number of bytes, "
            f"got {_type_name(value)}"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory must not be negative, got {value}")
        if value > _MAX_MEMORY:
            raise ValueError(f"memory {_show(value)} is out of range")
        return value
    amount = _quantity(value)
    if amount > _MAX_MEMORY:
        raise ValueError(f"memory {_show(value)} is out of range")
    return math.ceil(amount)


def format_cpu(cores: float) -> str:
    """Human words for a CPU amount: ``"0.5 CPU"``, ``"2 CPU"``, ``"0.25 CPU"``."""
    text = f"{cores:.3f}".rstrip("0").rstrip(".")
    return f"{text} CPU"


def format_memory(n: int) -> str:
    """Human words for a byte count in binary units: ``"512 MiB"``, ``"8 GiB"``, ``"1.5 GiB"``."""
    amount = float(n)
    unit = 0
    while amount >= 1024 and unit < len(_BINARY_UNITS) - 1:
        amount /= 1024
        unit += 1
    text = f"{amount:.2f}".rstrip("0").rstrip(".")
    return f"{text} {_BINARY_UNITS[unit]}"


def cpu_quantity(cores: float) -> str:
    """A canonical Kubernetes quantity for ``cores``: ``"2"`` or ``"1500m"``."""
    millis = round(cores * 1000)
    if cores > 0 and millis == 0:
        millis = 1  # Kubernetes rounds CPU up to whole millicores
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(n: int) -> str:
    """A canonical Kubernetes quantity for ``n`` bytes: ``"8Gi"``, ``"512Mi"`` or bytes."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIXES[suffix])
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


#: JupyterHub's ``ByteSpecification`` units (``jupyterhub.traitlets``): powers of 1024.
_BYTE_SPEC_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_byte_specification(value: str | int | float) -> int:
    """Bytes as KubeSpawner's ``mem_limit``/``mem_guarantee`` read them (JupyterHub's
    ``ByteSpecification``): a number is bytes (``int(value)``), a string ends in ``K``, ``M``,
    ``G`` or ``T`` (powers of 1024: ``"2G"`` is 2 GiB). Strings ByteSpecification refuses but
    Kubernetes reads unambiguously (``"512Mi"``, ``"1.5Gi"``, ``"1000"``) are read as
    Kubernetes does. Negative, non-finite and other values raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(
            f"memory must be a string like '2G' or '512Mi' or a number of bytes, "
            f"got {_type_name(value)}"
        )
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"memory {_show(value)} is out of range")
        n = int(value)
    elif value[-1:] in _BYTE_SPEC_UNITS:
        try:
            number = float(value[:-1])
        except ValueError:
            raise ValueError(
                f"{_show(value)} is not a memory size like '2G', '512M' or '512Mi'"
            ) from None
        if not math.isfinite(number):
            raise ValueError(f"memory {_show(value)} is out of range")
        n = int(number * _BYTE_SPEC_UNITS[value[-1]])
    else:
        match = _QUANTITY_RE.fullmatch(value)
        if match is None or match["suffix"] not in (None, "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"):
            raise ValueError(
                f"{_show(value)} is not a memory size like '2G', '512M' or '512Mi' "
                "(K, M, G, T are powers of 1024, as in KubeSpawner)"
            )
        return parse_memory(value)
    if n < 0:
        raise ValueError(f"memory must not be negative, got {_show(value)}")
    if n > _MAX_MEMORY:
        raise ValueError(f"memory {_show(value)} is out of range")
    return n
