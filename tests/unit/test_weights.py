"""Tests for samkit.downloads (table, cache, download) and samkit.weights (safe reading, strict loading)."""

from __future__ import annotations

import hashlib
import logging
import pathlib
import pickle
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from samkit import downloads, weights
from samkit.weights import (
    CHECKPOINTS,
    CheckpointError,
    CheckpointInfo,
    cache_dir,
    checkpoint_url,
    download_checkpoint,
    infer_variant,
    load_state_dict_strict,
    read_state_dict,
    resolve_checkpoint,
)

# --------------------------------------------------------------------------- helpers


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _fake_vit(width: int, depth: int) -> dict[str, torch.Tensor]:
    sd = {"image_encoder.pos_embed": torch.zeros(1, 64, 64, width)}
    for i in range(depth):
        sd[f"image_encoder.blocks.{i}.norm1.weight"] = torch.ones(width)
        sd[f"image_encoder.blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * width)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    return sd


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)
        self.register_buffer("scale", torch.ones(2))


def _tiny_sd() -> dict[str, torch.Tensor]:
    return {
        "proj.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "proj.bias": torch.tensor([1.0, 2.0]),
        "norm.weight": torch.tensor([3.0, 4.0]),
        "norm.bias": torch.tensor([5.0, 6.0]),
        "scale": torch.tensor([7.0, 8.0]),
    }


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment whose cache lives under tmp_path."""
    for name in ("SAMKIT_HOME", "XDG_CACHE_HOME", "SAMKIT_DOWNLOAD_BASE"):
        monkeypatch.delenv(name, raising=False)
    for variant in CHECKPOINTS:
        monkeypatch.delenv(downloads.url_override_variable(variant), raising=False)
    home = tmp_path / "samkit_home"
    monkeypatch.setenv("SAMKIT_HOME", str(home))
    return home


# --------------------------------------------------------------------------- table and env


def test_table_is_consistent() -> None:
    sam2 = {f"{family}_hiera_{size}" for family in ("sam2", "sam2.1") for size in ("t", "s", "b+", "l")}
    assert set(CHECKPOINTS) == {"vit_b", "vit_l", "vit_h", "vit_t", "hq_vit_b", "hq_vit_l", "hq_vit_h", "hq_vit_tiny"} | sam2
    assert CHECKPOINTS["sam2.1_hiera_b+"].url == (
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt"
    )
    assert CHECKPOINTS["sam2_hiera_t"].url == "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_tiny.pt"
    for variant, info in CHECKPOINTS.items():
        assert info.variant == variant
        assert info.url.endswith("/" + info.filename)
        if info.sha256 is not None:
            assert len(info.sha256) == 64 and info.sha256 == info.sha256.lower()
        assert info.size_bytes is None or info.size_bytes > 0
    assert CHECKPOINTS["vit_b"].url == (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    )


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAMKIT_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "samkit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "samkit"
    monkeypatch.setenv("SAMKIT_HOME", str(tmp_path / "sk"))
    assert cache_dir() == tmp_path / "sk"
    assert not (tmp_path / "sk").exists()  # nothing is created by asking


def test_checkpoint_url_overrides(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert checkpoint_url("vit_h") == CHECKPOINTS["vit_h"].url
    monkeypatch.setenv("SAMKIT_DOWNLOAD_BASE", "http://mirror.example/sam/")
    assert checkpoint_url("vit_h") == "http://mirror.example/sam/sam_vit_h_4b8939.pth"
    monkeypatch.setenv("SAMKIT_URL_VIT_H", "file:///data/vit_h.pth")
    assert checkpoint_url("vit_h") == "file:///data/vit_h.pth"
    assert checkpoint_url("vit_b") == "http://mirror.example/sam/sam_vit_b_01ec64.pth"
    with pytest.raises(CheckpointError, match="unknown variant 'vit_x'.*vit_b"):
        checkpoint_url("vit_x")


def test_url_override_variable_is_a_shell_name_for_every_variant(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert downloads.url_override_variable("vit_b") == "SAMKIT_URL_VIT_B"
    assert downloads.url_override_variable("sam2.1_hiera_b+") == "SAMKIT_URL_SAM2_1_HIERA_B_PLUS"
    assert downloads.url_override_variable("sam2.1_hiera_b") != downloads.url_override_variable("sam2.1_hiera_b+")
    names = {downloads.url_override_variable(v) for v in CHECKPOINTS}
    assert len(names) == len(CHECKPOINTS)  # one variable per variant
    for name in names:
        assert name.replace("_", "").isalnum() and name.isupper()
    monkeypatch.setenv("SAMKIT_URL_SAM2_1_HIERA_B_PLUS", "http://mirror.example/b_plus.pt")
    assert checkpoint_url("sam2.1_hiera_b+") == "http://mirror.example/b_plus.pt"
    assert checkpoint_url("sam2_hiera_b+") == CHECKPOINTS["sam2_hiera_b+"].url


# --------------------------------------------------------------------------- download


def test_download_success_verifies_and_writes_marker(
    env: Path, http_file_server, tmp_path: Path
) -> None:
    data = b"weights" * 5000
    (http_file_server.root / "file.bin").write_bytes(data)
    target_dir = tmp_path / "ckpts"
    path = download_checkpoint(
        "vit_b",
        directory=target_dir,
        progress=False,
        url=http_file_server.url + "/file.bin",
        sha256=_sha(data),
    )
    assert path == target_dir / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == data
    assert _leftovers(target_dir) == ["sam_vit_b_01ec64.pth", "sam_vit_b_01ec64.pth.sha256"]
    assert _sha(data) in (target_dir / "sam_vit_b_01ec64.pth.sha256").read_text()


def test_download_mismatch_leaves_nothing(env: Path, http_file_server, tmp_path: Path) -> None:
    data = b"not the right file"
    (http_file_server.root / "file.bin").write_bytes(data)
    target_dir = tmp_path / "ckpts"
    with pytest.raises(CheckpointError) as info:
        download_checkpoint(
            "vit_b",
            directory=target_dir,
            progress=False,
            url=http_file_server.url + "/file.bin",
            sha256="0" * 64,
        )
    message = str(info.value)
    assert "0" * 64 in message and _sha(data) in message
    assert _leftovers(target_dir) == []


def test_download_table_size_mismatch(env: Path, http_file_server, tmp_path: Path) -> None:
    # Default sha256=... uses the table's digest and size: a tiny file fails the size check.
    (http_file_server.root / "sam_vit_t.pt").write_bytes(b"tiny")
    target_dir = tmp_path / "ckpts"
    with pytest.raises(CheckpointError, match="4 bytes, expected 40728226"):
        download_checkpoint(
            "vit_t",
            directory=target_dir,
            progress=False,
            url=http_file_server.url + "/sam_vit_t.pt",
        )
    assert _leftovers(target_dir) == []


def test_download_without_digest_warns(env: Path, http_file_server, tmp_path: Path, caplog) -> None:
    (http_file_server.root / "f.bin").write_bytes(b"abc")
    with caplog.at_level(logging.WARNING, logger="samkit.downloads"):
        path = download_checkpoint(
            "vit_l",
            directory=tmp_path / "c",
            progress=False,
            url=http_file_server.url + "/f.bin",
            sha256=None,
        )
    assert path.read_bytes() == b"abc"
    assert any("not verified" in r.getMessage() for r in caplog.records)


def test_http_404_is_checkpoint_error(env: Path, http_file_server, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="HTTP 404"):
        download_checkpoint(
            "vit_b",
            directory=tmp_path / "c",
            progress=False,
            url=http_file_server.url + "/missing.pth",
        )
    assert _leftovers(tmp_path / "c") == []


def test_short_read_is_a_failed_download(env: Path, tmp_path: Path, monkeypatch) -> None:
    class ShortResponse:
        headers = {"Content-Length": "100"}

        def __init__(self) -> None:
            self.chunks = [b"x" * 10]

        def read(self, n: int) -> bytes:
            return self.chunks.pop() if self.chunks else b""

        def __enter__(self) -> ShortResponse:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(downloads.urllib.request, "urlopen", lambda *a, **k: ShortResponse())
    with pytest.raises(CheckpointError, match="closed after 10 of 100 bytes"):
        download_checkpoint("vit_b", directory=tmp_path / "c", progress=False, sha256=None)
    assert _leftovers(tmp_path / "c") == []


def test_file_url_mirror(env: Path, tmp_path: Path) -> None:
    data = b"on a shared disk"
    source = tmp_path / "share" / "sam_vit_l_0b3195.pth"
    source.parent.mkdir()
    source.write_bytes(data)
    path = download_checkpoint("vit_l", progress=False, url=source.as_uri(), sha256=_sha(data))
    assert path.read_bytes() == data


def test_connection_refused_is_helpful(env: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/sam_vit_b_01ec64.pth"
    with pytest.raises(CheckpointError) as info:
        download_checkpoint("vit_b", directory=tmp_path / "c", progress=False, url=url)
    message = str(info.value)
    assert "download of " + url + " failed" in message
    assert "checkpoint=" in message and "--checkpoint PATH" in message
    assert "SAMKIT_DOWNLOAD_BASE" in message
    assert "\n" not in message
    assert _leftovers(tmp_path / "c") == []


def test_samkit_home_and_download_base(
    env: Path, http_file_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"mirror copy of vit_b"
    (http_file_server.root / "sam_vit_b_01ec64.pth").write_bytes(data)
    monkeypatch.setenv("SAMKIT_DOWNLOAD_BASE", http_file_server.url + "/")
    path = download_checkpoint("vit_b", progress=False, sha256=_sha(data))
    assert path == env / "checkpoints" / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == data
    assert http_file_server.requests == ["/sam_vit_b_01ec64.pth"]


def test_per_variant_url_env(env: Path, http_file_server, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"some vit_h"
    (http_file_server.root / "elsewhere.pth").write_bytes(data)
    monkeypatch.setenv("SAMKIT_URL_VIT_H", http_file_server.url + "/elsewhere.pth")
    path = download_checkpoint("vit_h", progress=False, sha256=_sha(data))
    assert path.name == "sam_vit_h_4b8939.pth" and path.read_bytes() == data


def test_cached_file_reused_without_network(env: Path, http_file_server, monkeypatch) -> None:
    data = b"cached bytes"
    (http_file_server.root / "sam_vit_b_01ec64.pth").write_bytes(data)
    monkeypatch.setenv("SAMKIT_DOWNLOAD_BASE", http_file_server.url)
    first = download_checkpoint("vit_b", progress=False, sha256=_sha(data))
    http_file_server.stop()
    calls: list[Path] = []
    real_hash = downloads._sha256_file
    monkeypatch.setattr(downloads, "_sha256_file", lambda p: calls.append(p) or real_hash(p))
    second = download_checkpoint("vit_b", progress=False, sha256=_sha(data))
    assert second == first and second.read_bytes() == data
    assert calls == []  # the marker spared a rehash
    # A stale marker (file changed) forces one rehash, which then fails and re-downloads:
    # with the server gone that is a download error, and the cached file is untouched.
    second.write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="failed"):
        download_checkpoint("vit_b", progress=False, sha256=_sha(data))
    assert len(calls) == 1
    assert second.read_bytes() == b"tampered"


def test_cached_file_without_marker_is_hashed_once(env: Path, tmp_path: Path, monkeypatch) -> None:
    data = b"dropped in by hand"
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "mobile_sam.pt").write_bytes(data)
    calls: list[Path] = []
    real_hash = downloads._sha256_file
    monkeypatch.setattr(downloads, "_sha256_file", lambda p: calls.append(p) or real_hash(p))
    for _ in range(3):
        path = download_checkpoint(
            "vit_t", directory=directory, sha256=_sha(data), url="http://127.0.0.1:9/x"
        )
        assert path.read_bytes() == data
    assert len(calls) == 1


def test_resolve_checkpoint(env: Path, tmp_path: Path) -> None:
    f = tmp_path / "mine.pth"
    f.write_bytes(b"x")
    assert resolve_checkpoint("vit_b", f) == f
    assert resolve_checkpoint("vit_b", str(f)) == f
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        resolve_checkpoint("vit_b", tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        resolve_checkpoint("vit_b", tmp_path)


def test_resolve_none_uses_cache(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"official bytes"
    info = CHECKPOINTS["vit_b"]
    fake = CheckpointInfo("vit_b", info.filename, info.url, _sha(data), len(data))
    monkeypatch.setitem(CHECKPOINTS, "vit_b", fake)
    monkeypatch.setenv("SAMKIT_DOWNLOAD_BASE", f"http://127.0.0.1:{_free_port()}")  # unreachable
    with pytest.raises(CheckpointError, match="failed"):
        resolve_checkpoint("vit_b", None, progress=False)
    cached = env / "checkpoints" / info.filename
    cached.write_bytes(data)
    assert resolve_checkpoint("vit_b", None, progress=False) == cached
    assert (env / "checkpoints" / (info.filename + ".sha256")).exists()


# --------------------------------------------------------------------------- reading


def test_read_state_dict_roundtrip_pth(tmp_path: Path) -> None:
    sd = _tiny_sd()
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    loaded = read_state_dict(path)
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_read_state_dict_legacy_format(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save(_tiny_sd(), path, _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(path)["scale"], torch.tensor([7.0, 8.0]))


def test_safetensors_roundtrip(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = _tiny_sd()
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    loaded = read_state_dict(path)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    # Recognised by content too, whatever the suffix.
    renamed = tmp_path / "w.bin"
    renamed.write_bytes(path.read_bytes())
    assert read_state_dict(renamed).keys() == sd.keys()


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_state_dict(tmp_path: Path, wrapper: str) -> None:
    path = tmp_path / "ft.pth"
    torch.save({wrapper: _tiny_sd(), "epoch": 3, "lr": 0.1}, path)
    assert read_state_dict(path).keys() == _tiny_sd().keys()


class _Evil:
    """Unpickling this would create a file; a safe loader must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["zip", "legacy", "raw_pickle"])
def test_pickled_code_is_refused_and_not_run(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"proj.weight": torch.zeros(2), "x": _Evil(marker)}
    if kind == "zip":
        torch.save(payload, path)
    elif kind == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert not marker.exists()
    assert "refuses to unpickle code" in str(info.value)
    assert "nothing in it was run" in str(info.value)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*truncated or corrupt.*download it again"):
        read_state_dict(path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.randn(32, 32)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(path)


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_state_dict(junk)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")


def test_non_tensor_values_rejected(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"w": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match="'note' is a str, not a tensor"):
        read_state_dict(path)
    path2 = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path2)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(path2)


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    ("width", "depth", "variant"), [(768, 12, "vit_b"), (1024, 24, "vit_l"), (1280, 32, "vit_h")]
)
def test_infer_variant_vit(width: int, depth: int, variant: str) -> None:
    assert infer_variant(_fake_vit(width, depth)) == variant


def test_infer_variant_partial_and_unknown() -> None:
    sd = _fake_vit(768, 12)
    del sd["image_encoder.pos_embed"]
    assert infer_variant(sd) == "vit_b"  # width from norm1, depth from block count
    only_pos = {"image_encoder.pos_embed": torch.zeros(1, 64, 64, 1024)}
    assert infer_variant(only_pos) == "vit_l"
    assert infer_variant(_fake_vit(768, 24)) is None  # contradictory
    assert infer_variant(_fake_vit(512, 12)) is None  # unknown width
    assert infer_variant({"foo": torch.zeros(1)}) is None
    tiny = {"image_encoder.layers.0.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}
    assert infer_variant(tiny) == "vit_t"


# --------------------------------------------------------------------------- strict loading


def test_load_strict_ok_and_dtype_preserved() -> None:
    model = Tiny().to(torch.bfloat16)
    sd = {k: v.double() for k, v in _tiny_sd().items()}
    load_state_dict_strict(model, sd, variant="tiny")
    assert model.proj.weight.dtype == torch.bfloat16
    assert model.scale.dtype == torch.bfloat16
    assert torch.equal(model.proj.bias.float(), torch.tensor([1.0, 2.0]))


def test_load_strict_ignore_prefixes() -> None:
    sd = _tiny_sd() | {"head.weight": torch.zeros(3), "norm_head.bias": torch.zeros(3)}
    load_state_dict_strict(Tiny(), sd, variant="tiny", ignore_prefixes=("head.", "norm_head."))
    with pytest.raises(CheckpointError, match="2 unexpected keys"):
        load_state_dict_strict(Tiny(), sd, variant="tiny")


def test_load_strict_reports_everything_in_one_message() -> None:
    sd = _tiny_sd()
    del sd["norm.bias"]
    sd["proj.weight"] = torch.zeros(4, 3)
    sd["extra"] = torch.zeros(1)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(model, sd, variant="tiny")
    message = str(info.value)
    assert "1 missing keys (norm.bias)" in message
    assert "1 unexpected keys (extra)" in message
    assert "proj.weight: checkpoint (4, 3) vs model (2, 3)" in message
    assert "\n" not in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_load_strict_many_keys_are_abbreviated() -> None:
    sd = _tiny_sd() | {f"extra.{i}": torch.zeros(1) for i in range(20)}
    with pytest.raises(CheckpointError, match=r"20 unexpected keys \(.*\+15 more\)"):
        load_state_dict_strict(Tiny(), sd, variant="tiny")


def test_load_strict_wrong_variant() -> None:
    expected = "checkpoint has 24 blocks of width 1024: it is vit_l, not vit_b"
    with pytest.raises(CheckpointError, match=expected):
        load_state_dict_strict(Tiny(), _fake_vit(1024, 24), variant="vit_b")
    tiny_sd = {"image_encoder.layers.0.x": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="TinyViT.*it is vit_t, not vit_h"):
        load_state_dict_strict(Tiny(), tiny_sd, variant="vit_h")
