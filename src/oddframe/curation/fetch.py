"""``oddframe fetch-sdo``: download SDO/AIA images for ``oddframe prep`` through SunPy's Fido (VSO).

How seed 001 acquired its data (AIA 171 A at a one-minute cadence, e.g. the May 2024 storms). SunPy is an
optional extra (``pip install 'oddframe[sdo]'``, which installs ``sunpy[net]``); it is imported only when a
download starts, so the rest of oddframe never needs it. :func:`build_sdo_query` is pure and checks the request
before anything touches the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.time import Time

from oddframe.errors import OddframeError

#: Wavelengths (Angstrom) each instrument observes, and the native cadence (seconds) of each band.
WAVELENGTHS: dict[str, dict[int, float]] = {
    # SDO/AIA (Lemen et al. 2012, Sol. Phys. 275, 17): seven EUV bands every 12 s, two UV bands every 24 s,
    # and white light (4500 A) every hour.
    "aia": {94: 12.0, 131: 12.0, 171: 12.0, 193: 12.0, 211: 12.0, 304: 12.0, 335: 12.0, 1600: 24.0, 1700: 24.0,
            4500: 3600.0},
}
INSTRUMENTS = tuple(WAVELENGTHS)
INSTALL_HINT = "pip install 'oddframe[sdo]'"


def build_sdo_query(instrument: str, wavelength: int, start: str, end: str, cadence: float) -> dict[str, Any]:
    """Check an SDO download request and describe it as plain data.

    Args:
        instrument: one of :data:`INSTRUMENTS` (case-insensitive), e.g. ``"aia"``.
        wavelength: band in Angstrom, e.g. 171.
        start, end: ISO 8601 UTC times, e.g. ``"2024-05-10T00:00:00"`` (``end`` after ``start``).
        cadence: seconds between images (at least the band's native cadence; 60 = one image a minute).

    Returns:
        ``{"instrument", "wavelength_angstrom", "start", "end", "cadence_seconds", "native_cadence_seconds",
        "expected_images"}`` with times normalised to ISO UTC; ``expected_images`` is the number of sampling
        instants in ``[start, end]``.

    Raises:
        ValueError: unknown instrument or wavelength (the message lists the allowed ones), unparsable or
            reversed times, or a cadence below the native one.
    """
    key = str(instrument).lower()
    if key not in WAVELENGTHS:
        raise ValueError(f"instrument must be one of {', '.join(INSTRUMENTS)}; got {instrument!r}")
    bands = WAVELENGTHS[key]
    if isinstance(wavelength, bool) or not isinstance(wavelength, (int, float)) or wavelength not in bands:
        raise ValueError(f"{key} wavelength must be one of {', '.join(map(str, bands))} (Angstrom); got {wavelength!r}")
    t0, t1 = _time("start", start), _time("end", end)
    if t1 <= t0:
        raise ValueError(f"end ({t1.isot}) must be after start ({t0.isot})")
    native = bands[int(wavelength)]
    if not cadence >= native:
        raise ValueError(f"cadence must be >= {native:g} s, the native cadence of {key} {int(wavelength)} A; "
                         f"got {cadence}")
    seconds = float((t1 - t0).sec)
    return {
        "instrument": key,
        "wavelength_angstrom": int(wavelength),
        "start": t0.isot,
        "end": t1.isot,
        "cadence_seconds": float(cadence),
        "native_cadence_seconds": native,
        # astropy's time difference carries ~1e-9 s of float error: 3599.9999999 s must still count 60 steps.
        "expected_images": math.floor(seconds / cadence + 1e-6) + 1,
    }


def _time(name: str, value: str) -> Time:
    try:
        return Time(value, scale="utc")
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be an ISO 8601 time such as 2024-05-10T00:00:00; got {value!r}") from None


@dataclass
class FetchResult:
    """What :func:`fetch_sdo` downloaded.

    Attributes:
        query: the checked request (:func:`build_sdo_query`).
        found: number of records the search returned.
        files: paths of the files now in the output folder.
        errors: one line per failed download (a re-run fetches only what is missing).
    """

    query: dict[str, Any]
    found: int
    files: list[Path]
    errors: list[str] = field(default_factory=list)


def fetch_sdo(
    out: str | Path,
    *,
    instrument: str = "aia",
    wavelength: int = 171,
    start: str,
    end: str,
    cadence: float = 60.0,
    max_conn: int = 4,
    progress: bool = True,
) -> FetchResult:
    """Search the VSO for SDO images and download them into ``out`` (files already there are kept, not fetched).

    Args:
        out: folder to download into (created).
        instrument, wavelength, start, end, cadence: the request, see :func:`build_sdo_query`.
        max_conn: parallel downloads.
        progress: show SunPy's download progress bar.

    Raises:
        ValueError: a bad request (before any network access).
        OddframeError: SunPy is not installed (with the command that installs it), or the search failed.
    """
    query = build_sdo_query(instrument, wavelength, start, end, cadence)
    try:
        import astropy.units as u
        from sunpy.net import Fido
        from sunpy.net import attrs as a
    except ImportError:
        raise OddframeError(f"fetch-sdo needs SunPy, an optional extra: {INSTALL_HINT}") from None
    attrs = [
        a.Time(query["start"], query["end"]),
        a.Instrument(query["instrument"]),
        a.Wavelength(query["wavelength_angstrom"] * u.angstrom),
        a.Sample(query["cadence_seconds"] * u.s),  # one record per cadence interval instead of every 12 s image
    ]
    try:
        result = Fido.search(*attrs)
    except Exception as e:  # noqa: BLE001 - network and VSO errors come in many types
        raise OddframeError(f"SDO search failed ({type(e).__name__}: {e}); check the network and the times") from e
    found = int(getattr(result, "file_num", 0) or 0)
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    # "{file}" keeps the archive's file names; overwrite=False skips files a previous run fetched.
    downloaded = Fido.fetch(result, path=str(folder / "{file}"), max_conn=max_conn, progress=progress,
                            overwrite=False)
    errors = [str(e) for e in getattr(downloaded, "errors", [])]
    return FetchResult(query, found, [Path(p) for p in downloaded], errors)
