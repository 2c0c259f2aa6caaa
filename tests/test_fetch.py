"""``oddframe fetch-sdo``: the query it builds, its checks, and the Fido calls (a fake ``sunpy``, no network)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import astropy.units as u
import pytest
from typer.testing import CliRunner

from oddframe.cli import app
from oddframe.errors import OddframeError
from oddframe.curation.fetch import build_sdo_query, fetch_sdo


def test_build_sdo_query_normalises_the_request() -> None:
    q = build_sdo_query("AIA", 171, "2024-05-10", "2024-05-10T01:00:00", 60)
    assert q == {
        "instrument": "aia",
        "wavelength_angstrom": 171,
        "start": "2024-05-10T00:00:00.000",
        "end": "2024-05-10T01:00:00.000",
        "cadence_seconds": 60.0,
        "native_cadence_seconds": 12.0,
        "expected_images": 61,  # 00:00, 00:01, ..., 01:00
    }
    assert build_sdo_query("aia", 1600, "2024-05-10T00:00:00", "2024-05-10T00:02:00", 24)["expected_images"] == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("hmi", 171, "2024-05-10", "2024-05-11", 60), r"instrument must be one of aia; got 'hmi'"),
        (("aia", 170, "2024-05-10", "2024-05-11", 60), r"aia wavelength must be one of 94, 131, 171, 193, .*got 170"),
        (("aia", 171, "2024-05-11", "2024-05-10", 60), r"end \(2024-05-10T00:00:00.000\) must be after start"),
        (("aia", 171, "2024-05-10", "2024-05-10", 60), "must be after start"),
        (("aia", 171, "yesterday", "2024-05-10", 60), "start must be an ISO 8601 time"),
        (("aia", 171, "2024-05-10", "2024-05-11", 5), r"cadence must be >= 12 s, the native cadence of aia 171"),
        (("aia", 1700, "2024-05-10", "2024-05-11", 12), r"cadence must be >= 24 s"),
    ],
)
def test_build_sdo_query_rejects_bad_requests(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_sdo_query(*args)


def test_fetch_without_sunpy_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "sunpy", None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "sunpy.net", None)
    with pytest.raises(OddframeError, match=r"pip install 'oddframe\[sdo\]'"):
        fetch_sdo(tmp_path, start="2024-05-10", end="2024-05-10T01:00:00")
    assert not tmp_path.joinpath("x").exists()
    # A bad request is refused before SunPy is even looked for.
    with pytest.raises(ValueError, match="wavelength"):
        fetch_sdo(tmp_path, wavelength=999, start="2024-05-10", end="2024-05-11")


class _Attr:
    """A stand-in for a sunpy.net.attrs attribute: remembers its arguments."""

    def __init__(self, *args: object) -> None:
        self.args = args


class _Downloaded(list):
    """parfive.Results: a list of paths with an ``errors`` list."""

    errors: list[str] = []


def fake_sunpy(monkeypatch: pytest.MonkeyPatch, files: list[str], errors: list[str]) -> dict:
    calls: dict = {}

    class Fido:
        @staticmethod
        def search(*attrs: object) -> object:
            calls["search"] = attrs
            return types.SimpleNamespace(file_num=len(files))

        @staticmethod
        def fetch(result: object, **kwargs: object) -> _Downloaded:
            calls["fetch"] = (result, kwargs)
            out = _Downloaded(files)
            out.errors = errors
            return out

    attrs = types.ModuleType("sunpy.net.attrs")
    for name in ("Time", "Instrument", "Wavelength", "Sample"):
        setattr(attrs, name, type(name, (_Attr,), {}))
    net = types.ModuleType("sunpy.net")
    net.Fido, net.attrs = Fido, attrs
    sunpy = types.ModuleType("sunpy")
    sunpy.net = net
    monkeypatch.setitem(sys.modules, "sunpy", sunpy)
    monkeypatch.setitem(sys.modules, "sunpy.net", net)
    monkeypatch.setitem(sys.modules, "sunpy.net.attrs", attrs)
    return calls


def test_fetch_calls_fido_with_the_right_attributes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = [str(tmp_path / "sdo" / "aia_lev1_171a_2024_05_10t00_00_09_35z_image_lev1.fits")]
    calls = fake_sunpy(monkeypatch, files, [])
    result = fetch_sdo(tmp_path / "sdo", instrument="aia", wavelength=171, start="2024-05-10T00:00:00",
                       end="2024-05-10T00:10:00", cadence=120, max_conn=2, progress=False)
    time, instrument, wavelength, sample = calls["search"]
    assert type(time).__name__ == "Time" and time.args == ("2024-05-10T00:00:00.000", "2024-05-10T00:10:00.000")
    assert type(instrument).__name__ == "Instrument" and instrument.args == ("aia",)
    assert type(wavelength).__name__ == "Wavelength" and wavelength.args[0] == 171 * u.angstrom
    assert type(sample).__name__ == "Sample" and sample.args[0].to(u.s).value == 120
    found, kwargs = calls["fetch"]
    assert found.file_num == 1
    assert kwargs == {"path": str(tmp_path / "sdo" / "{file}"), "max_conn": 2, "progress": False, "overwrite": False}
    assert (tmp_path / "sdo").is_dir()
    assert result.found == 1 and result.files == [Path(files[0])] and result.errors == []
    assert result.query["expected_images"] == 6


def test_fetch_reports_failed_downloads_and_the_cli_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_sunpy(monkeypatch, [], ["https://sdo.example/a.fits: timeout"])
    result = CliRunner().invoke(app, ["fetch-sdo", "--out", str(tmp_path), "--start", "2024-05-10T00:00:00",
                                      "--end", "2024-05-10T00:05:00"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "found 0 records; 0 files" in text and "failed: https://sdo.example/a.fits: timeout" in text


def test_cli_fetch_rejects_a_bad_wavelength() -> None:
    result = CliRunner().invoke(app, ["fetch-sdo", "--out", "/tmp/unused", "--wavelength", "170",
                                      "--start", "2024-05-10", "--end", "2024-05-11"])
    assert result.exit_code == 2 and "wavelength must be one of" in " ".join(result.output.split())
