"""Helpers for the server tests: the tiny model config, test pictures, a uvicorn thread."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from samkit import build_sam
from samkit.config import (
    HQSamConfig,
    ImageEncoderConfig,
    MaskDecoderConfig,
    PromptEncoderConfig,
    SamConfig,
    TinyViTConfig,
)
from samkit.config_sam2 import HieraConfig, Sam2Config
from samkit.modeling import Sam
from samkit.modeling.hq_sam import HQSam
from samkit.modeling.sam2 import Sam2

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

TINY_CONFIG = SamConfig(
    name="tiny",
    image_encoder=ImageEncoderConfig(
        img_size=256, embed_dim=64, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,), out_chans=32
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=32, image_embedding_size=16, input_image_size=256),
    mask_decoder=MaskDecoderConfig(
        transformer_dim=32, transformer_mlp_dim=64, transformer_num_heads=2, iou_head_hidden_dim=32
    ),
)


# SAM 2.1 in small: a 4-stage Hiera trunk with q-pooling and a global block, FPN neck and the
# high-resolution features into the decoder, on 256-pixel inputs.
TINY_SAM2_CONFIG = Sam2Config(
    name="tiny_sam2.1",
    image_encoder=HieraConfig(
        embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
        window_pos_embed_bkg_spatial_size=(4, 4), window_spec=(8, 4, 4, 2), img_size=256, d_model=32,
    ),
    prompt_encoder=TINY_CONFIG.prompt_encoder,
    mask_decoder=TINY_CONFIG.mask_decoder,
)

# HQ-SAM in small on the encoder of hq_vit_tiny (TinyViT, as MobileSAM), on 256-pixel inputs.
TINY_HQ_CONFIG = HQSamConfig(
    name="tiny_hq_vit_tiny",
    image_encoder=TinyViTConfig(
        img_size=256, embed_dims=(16, 32, 40, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), out_chans=32
    ),
    prompt_encoder=TINY_CONFIG.prompt_encoder,
    mask_decoder=TINY_CONFIG.mask_decoder,
)


def make_tiny_model(seed: int = 0) -> Sam:
    """The tiny random-weight SAM (deterministic for a seed)."""
    torch.manual_seed(seed)
    return build_sam(TINY_CONFIG)


def make_tiny_sam2_model(seed: int = 0) -> Sam2:
    """A tiny random-weight SAM 2.1 (see TINY_SAM2_CONFIG)."""
    torch.manual_seed(seed)
    model = build_sam(TINY_SAM2_CONFIG)
    assert isinstance(model, Sam2)
    return model


def make_tiny_hq_model(seed: int = 0) -> HQSam:
    """A tiny random-weight HQ-SAM with a TinyViT encoder (see TINY_HQ_CONFIG)."""
    torch.manual_seed(seed)
    model = build_sam(TINY_HQ_CONFIG)
    assert isinstance(model, HQSam)
    return model


def image_bytes(width: int, height: int, seed: int = 0, fmt: str = "PNG") -> bytes:
    """An encoded picture with a few flat shapes (so masks have structure)."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(width // 6, width // 2)), y0 + int(rng.integers(height // 6, height // 2))
        image[y0:y1, x0:x1] = rng.integers(60, 255, size=3, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def free_port_socket() -> socket.socket:
    """A listening-ready socket bound to 127.0.0.1 on a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a background thread."""

    url: str
    app: object
    stop: Callable[[], None]


def start_live_server(app: object) -> LiveServer:
    """Serve ``app`` with uvicorn in a thread; returns once it accepts connections."""
    import uvicorn

    sock = free_port_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()

    return LiveServer(url=f"http://127.0.0.1:{port}", app=app, stop=stop)
