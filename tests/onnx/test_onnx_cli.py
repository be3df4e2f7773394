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


def test_family_options_refused_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Options a family's graphs do not have: one line, exit 2, nothing written (no checkpoint is read)."""
    out = tmp_path / "o"
    assert main(["export-onnx", "--model", "sam2.1_hiera_t", "--raw-input", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("samkit export-onnx: error: --raw-input: not available for SAM 2 models")
    for model in ("hq_vit_b", "sam2.1_hiera_t"):
        assert main(["export-onnx", "--model", model, "--return-single-mask", "--out", str(out)]) == 2
        assert "--return-single-mask: SAM 1 models only" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("model", ["hq_vit_b", "sam2.1_hiera_l", "sam2_hiera_b+"])
def test_every_family_is_a_choice(model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """HQ-SAM and SAM 2.x names are accepted (a missing checkpoint is then the error, not the name)."""
    status = main(["export-onnx", "--model", model, "--checkpoint", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o")])
    assert status == 2
    assert "--checkpoint: no such file" in capsys.readouterr().err
