"""JCAMP-DX reader for exported NIR spectra (IUPAC JCAMP-DX 4.24, McDonald & Wilks 1988).

Instrument software exports spectra as JCAMP-DX text: labelled data records (``##LABEL=``)
and the ordinates in ``##XYDATA=(X++(Y..Y))`` form, either as plain numbers (AFFN) or
compressed (ASDF: SQZ digits, DIF differences, DUP repeats), or as ``##XYPOINTS=(XY..XY)``.
A file holds one spectrum or several blocks (``##TITLE=`` ... ``##END=``; LINK files); each
block with data becomes one row. The abscissa is rebuilt from ``##FIRSTX``, ``##LASTX`` and
``##NPOINTS`` (real units; ``##XFACTOR`` scales only the abscissas written in data lines, and in
``XYPOINTS``), ordinates are scaled by ``##YFACTOR``. Only
``##YUNITS=ABSORBANCE`` (or unset, or ``ARBITRARY UNITS``, taken as they are) is accepted:
nirwatch's models work on absorbance (log 1/R for diffuse reflectance), and a reflectance or
transmittance export must be converted by the instrument software, where its reference is
known.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nirwatch.errors import DataError

#: File name endings of JCAMP-DX files.
JCAMP_SUFFIXES = (".jdx", ".dx", ".jcamp")
_SQZ = {"@": 0, **{c: i + 1 for i, c in enumerate("ABCDEFGHI")}}
_SQZ.update({c: -(i + 1) for i, c in enumerate("abcdefghi")})
_DIF = {"%": 0, **{c: i + 1 for i, c in enumerate("JKLMNOPQR")}}
_DIF.update({c: -(i + 1) for i, c in enumerate("jklmnopqr")})
_DUP = {**{c: i + 1 for i, c in enumerate("STUVWXYZ")}, "s": 9}
_ASDF = set(_SQZ) | set(_DIF) | set(_DUP)
_AFFN = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_AFFN_NO_EXPONENT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_LABEL = re.compile(r"^##([^=]*)=(.*)$")
_X_UNITS = {"NANOMETERS": "nm", "NM": "nm", "1/CM": "cm-1", "CM-1": "cm-1", "MICROMETERS": "um"}


def _tokens(line: str, where: str) -> list[tuple[str, float]]:
    """(kind, value) tokens of one data line: kind ``abs``, ``dif`` or ``dup``."""
    out: list[tuple[str, float]] = []
    # Exponents only in plain-number lines: in ASDF, "E" is the SQZ digit 5.
    plain = not (_ASDF - {"E", "e"}) & set(line)
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t,;":
            i += 1
        elif c in _ASDF and not (plain and c in "Ee"):
            j = i + 1
            while j < n and line[j].isdigit():
                j += 1
            table = _SQZ if c in _SQZ else _DIF if c in _DIF else _DUP
            lead = table[c]
            digits = line[i + 1 : j]
            value = int(f"{abs(lead)}{digits}") * (-1 if lead < 0 else 1)
            out.append(("abs" if table is _SQZ else "dif" if table is _DIF else "dup", value))
            i = j
        else:
            m = (_AFFN if plain else _AFFN_NO_EXPONENT).match(line, i)
            if m is None or m.end() == i:
                raise DataError(f"{where}: cannot read {line[i : i + 20]!r} as JCAMP-DX data")
            out.append(("abs", float(m.group())))
            i = m.end()
    return out


def decode_xydata(lines: list[str], where: str = "XYDATA") -> np.ndarray:
    """The ordinates of ``(X++(Y..Y))`` lines (AFFN or ASDF), unscaled, shape (n,)."""
    ys: list[float] = []
    last_kind = "abs"
    for number, line in enumerate(lines, 1):
        toks = _tokens(line, f"{where}, line {number}")
        if not toks:
            continue
        row: list[float] = []
        prev_kind, prev_value = "abs", 0.0
        for kind, value in toks[1:]:  # toks[0] is the line's abscissa
            if kind == "dup":
                if not row:
                    raise DataError(f"{where}, line {number}: a repeat count with nothing before")
                for _ in range(int(value) - 1):
                    row.append(row[-1] + prev_value if prev_kind == "dif" else row[-1])
                continue
            if kind == "dif":
                base = row[-1] if row else (ys[-1] if ys else None)
                if base is None:
                    raise DataError(f"{where}, line {number}: a difference with nothing before")
                row.append(base + value)
            else:
                row.append(value)
            prev_kind, prev_value = kind, value
        if last_kind == "dif" and ys and row:
            # DIF lines repeat the previous line's last ordinate first (the Y check).
            if abs(row[0] - ys[-1]) > 1e-6 * max(1.0, abs(ys[-1])):
                raise DataError(
                    f"{where}, line {number}: Y check failed, expected {ys[-1]:g}, got {row[0]:g}"
                )
            row = row[1:]
        ys.extend(row)
        last_kind = prev_kind
    return np.asarray(ys, dtype=np.float64)


def _number(labels: dict[str, str], key: str, where: str, default: float | None = None) -> float:
    text = labels.get(key)
    if text is None:
        if default is None:
            raise DataError(f"{where}: no ##{key}= (needed to place the ordinates)")
        return default
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        raise DataError(f"{where}: ##{key}={text!r} is not a number") from None


def _block(
    labels: dict[str, str], data: list[str], form: str, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """One spectrum's (wavelengths or wavenumbers, absorbances), in the file's x order."""
    yunits = labels.get("YUNITS", "ABSORBANCE").strip().upper()
    if yunits not in ("ABSORBANCE", "ARBITRARY UNITS", ""):
        raise DataError(f"{where}: ##YUNITS={yunits}; expected ABSORBANCE")
    yfactor = _number(labels, "YFACTOR", where, 1.0)
    if "XYPOINTS" in form:
        values = np.array([v for line in data for _, v in _tokens(line, where)], dtype=float)
        if values.size % 2:
            raise DataError(f"{where}: XYPOINTS holds an odd number of values ({values.size})")
        xfactor = _number(labels, "XFACTOR", where, 1.0)
        return values[0::2] * xfactor, values[1::2] * yfactor
    if "X++(Y..Y)" not in form.replace(" ", ""):
        raise DataError(f"{where}: data table {form!r}; expected (X++(Y..Y)) or (XY..XY)")
    y = decode_xydata(data, where) * yfactor
    n = int(_number(labels, "NPOINTS", where, float(y.size)))
    if y.size != n:
        raise DataError(f"{where}: ##NPOINTS={n} but the data hold {y.size} ordinates")
    first, last = _number(labels, "FIRSTX", where), _number(labels, "LASTX", where)
    return np.linspace(first, last, n), y


def read_jcamp(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], str]:
    """Spectra of a JCAMP-DX file.

    Returns
    -------
    X : ndarray (n_spectra, n_points)
    axis : ndarray (n_points,), increasing
    metadata : dict with ``title`` (and ``sample_id`` from ``##SAMPLE DESCRIPTION`` or
        ``##$SAMPLE ID`` when every spectrum has one), one entry per spectrum
    axis_unit : ``"nm"`` or ``"cm-1"``

    Raises
    ------
    DataError
        Not JCAMP-DX, no data, an unsupported data form or unit, spectra on different axes.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    if "##" not in text[:2000] or "TITLE" not in text[:2000].upper():
        raise DataError(f"{source}: not JCAMP-DX (no ##TITLE= record at the start)")
    spectra: list[tuple[np.ndarray, np.ndarray, dict[str, str]]] = []
    labels: dict[str, str] = {}
    data: list[str] = []
    collecting = False
    form = ""
    for raw in text.splitlines():
        line = raw.split("$$", 1)[0].rstrip()  # $$ starts a comment
        m = _LABEL.match(line.strip())
        if m is None:
            if collecting and line.strip():
                data.append(line)
            continue
        # Label names ignore case, spaces, dashes, slashes and underscores (JCAMP-DX 4.24).
        key = re.sub(r"[\s\-/_]", "", m.group(1)).upper()
        value = m.group(2).strip()
        collecting = False
        if key in ("XYDATA", "XYPOINTS"):
            data, form, collecting = [], f"{key}={value}", True
        elif key == "TITLE":
            labels, data = {"TITLE": value}, []
        elif key == "END":
            if data:
                where = f"{source}: block {len(spectra) + 1} ({labels.get('TITLE', '')!r})"
                x, y = _block(labels, data, form, where)
                spectra.append((x, y, labels))
            data = []
        else:
            labels[key] = value
    if not spectra:
        raise DataError(f"{source}: no ##XYDATA= or ##XYPOINTS= block with data")
    xunits = [lab.get("XUNITS", "NANOMETERS").strip().upper() for _, _, lab in spectra]
    units = {_X_UNITS.get(u) for u in xunits}
    if None in units or len(units) != 1:
        raise DataError(f"{source}: ##XUNITS {sorted(set(xunits))}; expected NANOMETERS or 1/CM")
    unit = units.pop()
    assert unit is not None
    axis = spectra[0][0]
    rows = []
    for i, (x, y, _) in enumerate(spectra):
        if x.shape != axis.shape or not np.allclose(x, axis, rtol=0, atol=1e-6 * np.ptp(axis)):
            raise DataError(f"{source}: spectrum {i + 1} is on another axis than spectrum 1")
        rows.append(y)
    X = np.vstack(rows)
    if axis[0] > axis[-1]:  # wavenumber exports usually run downwards
        axis, X = axis[::-1].copy(), X[:, ::-1].copy()
    if unit == "um":
        axis, unit = axis * 1000.0, "nm"
    meta: dict[str, np.ndarray] = {"title": np.array([lab["TITLE"] for *_, lab in spectra])}
    samples = [lab.get("SAMPLEDESCRIPTION") or lab.get("$SAMPLEID") for *_, lab in spectra]
    if all(samples):
        meta["sample_id"] = np.array(samples, dtype=str)
    return X, axis, meta, unit
