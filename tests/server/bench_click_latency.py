"""Click latency of the web app with a vit_b-sized model (random weights, no checkpoint needed).

Not collected by pytest (a vit_b embedding takes 15-30 s here). Run::

    python tests/server/bench_click_latency.py [--dtype bfloat16] [--n 50] [--browser]

It serves the app on loopback, uploads a 967x546 picture once, then times 1-point multimask
predicts with outlined-PNG output (what the page asks for): the HTTP round trip from a Python
client (p50/p95, with the server's decode/encode split from the Server-Timing header) and, with
``--browser``, the page's own click -> mask shown time in headless Chromium (until the frame
with the mask is rendered), its phases, and the server's share of the browser's requests.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # so "tests.server.support" imports as a script

from tests.server.support import CHROMIUM, CHROMIUM_ARGS, start_live_server  # noqa: E402

WIDTH, HEIGHT = 967, 546


def _picture() -> bytes:
    from PIL import Image

    source = Path(__file__).resolve().parents[2] / "examples" / "chelsea.jpg"
    with Image.open(source) as image:
        resized = image.convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):6.1f} ms  p95 {p95:6.1f} ms  (n={len(ordered)})"


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads: uvicorn, workers, client)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def _official_predictor(model, app, image_id: str):  # type: ignore[no-untyped-def]
    """The official predictor with the same weights and the server's embedding of the image."""
    from segment_anything import SamPredictor as OfficialPredictor
    from segment_anything import sam_model_registry

    official = sam_model_registry["vit_b"]().eval()
    official.load_state_dict(model.state_dict())
    predictor = OfficialPredictor(official)
    ours = app.state.service.get(image_id).predictor
    predictor.features = ours.features.float()
    predictor.original_size = ours.original_size
    predictor.input_size = ours.input_size
    predictor.is_image_set = True
    return predictor


def main() -> int:
    """Run the benchmark; print the numbers."""
    import httpx
    import torch

    from samkit import build_sam
    from samkit.config import VARIANTS
    from samkit.server import create_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--n", type=int, default=50, help="timed clicks")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's). With 1, the CPU time per click approximates the wall time "
        "of an idle core, a fair figure when the machine is shared",
    )
    parser.add_argument("--browser", action="store_true", help="also time click -> mask drawn in Chromium")
    parser.add_argument(
        "--official",
        action="store_true",
        help="also time the official SamPredictor.predict on the same embedding and points, interleaved "
        "(a yardstick when the machine is shared: compare ratios)",
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_sam(VARIANTS["vit_b"].with_overrides(name="vit_b_random"), dtype=args.dtype)
    server = start_live_server(create_app(model))
    rng = np.random.default_rng(0)
    data = _picture()
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            t0 = time.perf_counter()
            info = client.post("/api/images", files={"file": ("cat.jpg", data, "image/jpeg")}).json()
            print(
                f"vit_b ({args.dtype}) embedding of {info['width']}x{info['height']}: "
                f"{time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}"
            )
            url = f"/api/images/{info['id']}/predict"
            official = _official_predictor(model, server.app, info["id"]) if args.official else None
            totals, decodes, encodes, sizes, official_times, cpu = [], [], [], [], [], []
            for i in range(args.n + 3):
                point = [[float(rng.uniform(0, WIDTH)), float(rng.uniform(0, HEIGHT))]]
                cpu_start = _cpu_seconds()
                start = time.perf_counter()
                response = client.post(url, json={"points": point, "labels": [1], "multimask": True, "format": "outlined_png"})
                elapsed = (time.perf_counter() - start) * 1000
                cpu_ms = (_cpu_seconds() - cpu_start) * 1000
                response.raise_for_status()
                if official is not None:
                    start = time.perf_counter()
                    official.predict(np.array(point), np.array([1]), multimask_output=True)
                    if i >= 3:
                        official_times.append((time.perf_counter() - start) * 1000)
                if i < 3:
                    continue  # warm-up
                timing = _server_timing(response.headers["server-timing"])
                cpu.append(cpu_ms)
                totals.append(elapsed)
                decodes.append(timing["decode"])
                encodes.append(timing["encode"])
                sizes.append(len(response.content))
            print(f"API round trip (1 point, 3 masks, outlined PNG): {_percentiles(totals)}")
            print(f"  CPU time, server + client, all threads: {_percentiles(cpu)}")
            print(f"  server decode+upscale:                {_percentiles(decodes)}")
            print(f"  server PNG encode (3 masks):          {_percentiles(encodes)}")
            print(f"  response size: median {statistics.median(sizes) / 1024:.1f} KiB")
            if official_times:
                print(f"official SamPredictor.predict (in-process, same points): {_percentiles(official_times)}")
        if args.browser:
            from playwright.sync_api import sync_playwright

            path = Path("/tmp/samkit_bench_cat.jpg")
            path.write_bytes(data)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(server.url)
                page.set_input_files("#file-input", str(path))  # same bytes: the embedding is cached
                page.wait_for_function("document.body.dataset.imageId", timeout=600_000)
                box = page.locator("#prompt-layer").bounding_box()
                for _ in range(args.n + 3):
                    drawn = page.evaluate("window.samkit.predictsDrawn")
                    page.keyboard.press("Escape")
                    # Let the page finish painting the cleared object first, as it has long before a
                    # person's next click (a person needs > 100 ms between two actions).
                    page.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
                    page.mouse.click(
                        box["x"] + rng.uniform(0.05, 0.95) * box["width"],
                        box["y"] + rng.uniform(0.05, 0.95) * box["height"],
                    )
                    # Polled on a timer: the default polling on every animation frame keeps Chromium
                    # producing frames, which takes CPU from the server on a 2-core machine.
                    page.wait_for_function(f"window.samkit.predictsDrawn > {drawn}", polling=25)
                times = page.evaluate("window.samkit.roundTrips")[3:]
                phases = page.evaluate("window.samkit.phases")[3:]
                server_side = page.evaluate(
                    """performance.getEntriesByType("resource").filter((e) => e.name.endsWith("/predict"))
                       .map((e) => Object.fromEntries(e.serverTiming.map((t) => [t.name, t.duration])))"""
                )[-len(times) :]
                print(f"browser click -> mask drawn:            {_percentiles(times)}")
                for i, name in enumerate(("request + JSON parse", "mask PNG decode", "draw", "until the frame is rendered")):
                    print(f"  {name + ':':36s} {_percentiles([p[i] for p in phases])}")
                for name in ("decode", "encode"):
                    values = [t[name] for t in server_side if name in t]
                    if values:
                        print(f"    of the request, server {name + ':':14s} {_percentiles(values)}")
                page.screenshot(path="/tmp/samkit_bench_page.png")
                browser.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
