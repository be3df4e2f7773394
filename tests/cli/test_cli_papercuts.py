"""First-run papercuts: one-line argument errors, outputs checked before work, download's offline advice, progress off a terminal."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import pytest

from samkit import downloads
from samkit.cli import main
from samkit.progress import LineProgress, make_progress


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["export-onnx", "--opset", "x"], "invalid int value"),
        (["export-onnx"], "required: --out"),
        (["segment", "a.png", "--out", "m.png", "--bogus"], "--bogus"),
        (["nope"], "invalid choice"),
    ],
)
def test_argument_errors_are_one_line_exit_2(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "--help" in err[0], err
    assert not err[0].startswith("usage:")


def test_export_onnx_out_below_a_file_is_refused_before_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export-onnx", "--model", "vit_t", "--checkpoint", str(blocker), "--out", str(blocker / "onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "is a file" in err[0], err  # not a checkpoint error: checked first


def test_bench_json_in_a_missing_folder_is_refused_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--rows", "predict", "--json", str(tmp_path / "missing" / "b.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_download_offline_names_the_cache_file_and_takes_a_file_put_there(
    http_file_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("SAMKIT_HOME", str(home))
    monkeypatch.setenv("SAMKIT_DOWNLOAD_BASE", http_file_server.url)
    http_file_server.stop()  # offline
    assert main(["download", "vit_t", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    target = home / "checkpoints" / downloads.CHECKPOINTS["vit_t"].filename
    assert str(target) in err and "\n" not in err
    assert "pass a local file instead" not in err
    assert "sha256 is checked on first use" in err and "SAMKIT_URL_VIT_T" in err

    # A file with no published digest is not promised a check it will not get.
    assert main(["download", "hq_vit_tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no sha256 is published" in err and "checked on first use" not in err
    assert "SAMKIT_URL_HQ_VIT_TINY" in err

    # A file fetched by other means and put there is taken (after its sha256 is checked).
    content = b"stand-in for the checkpoint"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    info = dataclasses.replace(
        downloads.CHECKPOINTS["vit_t"], sha256=hashlib.sha256(content).hexdigest(), size_bytes=len(content)
    )
    monkeypatch.setitem(downloads.CHECKPOINTS, "vit_t", info)
    assert main(["download", "vit_t", "--no-progress"]) == 0
    assert str(target) in capsys.readouterr().out


def test_line_progress_writes_whole_lines_periodically() -> None:
    stream = io.StringIO()
    progress = LineProgress(4, desc="samkit everything", unit="images", initial=1, interval=0.0, first_after=0.0, stream=stream)
    progress.update(1)
    progress.update(2)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("samkit everything: 2/4 images (50%)") and "s left" in lines[0]
    assert lines[-1].startswith("samkit everything: 4/4 images (100%)")
    assert "\r" not in stream.getvalue()


def test_short_runs_stay_quiet_and_terminals_get_a_bar() -> None:
    quiet = io.StringIO()
    with make_progress(3, desc="x", stream=quiet) as progress:
        progress.update(3)
    assert quiet.getvalue() == ""  # under 2 s: nothing

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = make_progress(3, desc="x", stream=Terminal())
    assert not isinstance(bar, LineProgress)
    bar.close()
