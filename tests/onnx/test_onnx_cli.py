"""``samkit export-onnx``: registration and user errors (the full export runs in test_onnx_vit_b)."""

from __future__ import annotations

from pathlib import Path

import pytest

from samkit.cli import main


def test_subcommand_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export-onnx", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--model", "--checkpoint", "--out", "--quantize", "--opset", "--raw-input", "--return-single-mask"):
        assert option in help_text


def test_missing_checkpoint_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.pth"
    status = main(["export-onnx", "--model", "vit_b", "--checkpoint", str(missing), "--out", str(tmp_path / "o")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("samkit export-onnx: error: --checkpoint: no such file") and str(missing) in err
    assert not (tmp_path / "o").exists()


def test_bad_opset_and_quantize(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export-onnx", "--opset", "9", "--out", str(tmp_path)]) == 2
    assert "--opset: expected 14..21" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export-onnx", "--quantize", "int4", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_unreadable_checkpoint_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export-onnx", "--checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("samkit export-onnx: error:")
