"""Image decoders and resizers on the host: which one ``datarax.operators.host_image`` should use.

Usage::

    python -m benchmarks.decoders                  # about a minute on two cores
    python -m benchmarks.decoders --repeats 7 --images 96 --out bench-results/decoders.md

Generated images (smooth content plus a little noise, so they compress like
photographs), all decoders and resizers timed on the same bytes, alternated
round robin (these machines are noisy: only ratios within one run mean much),
medians of ``--repeats``:

* **decode**: JPEGs of sides 160-320 px at quality 90, and PNGs of the same
  pixels: PIL (``Image.open(BytesIO).convert("RGB")``), simplejpeg
  (``decode_jpeg``), OpenCV (``cv2.imdecode`` plus the BGR -> RGB
  conversion, so every output is the same RGB array). The maximum difference
  from PIL's pixels is printed beside each.
* **decode, large**: JPEGs of sides 800-1200 px for a 224 px target: the
  full decode, then the reduced decodes libjpeg offers (PIL ``Image.draft``,
  simplejpeg ``min_height``/``min_width``, OpenCV ``IMREAD_REDUCED_COLOR_2``).
* **resize**: the decoded 160-320 px images to 224 x 224: PIL ``resize``
  (BILINEAR, antialiased when shrinking; the numpy -> PIL -> numpy copies
  included), PIL ``resize(box=...)`` of a crop, PIL ``reduce`` + ``resize``
  (``reducing_gap``), ``cv2.resize`` with INTER_LINEAR (no antialiasing) and
  INTER_AREA.
* **pipeline step**: decode + random resized crop + resize, per record, as
  the host operators do it.

OpenCV runs with ``cv2.setNumThreads(1)``: a pipeline's worker threads
parallelise across records, so every library is measured on one core.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def make_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random RGB image with a little grain, so it compresses like a photograph."""
    from PIL import Image

    coarse = rng.integers(0, 256, size=(max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, size=smooth.shape, dtype=np.int16)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    else:
        Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def make_set(n: int, low: int, high: int, fmt: str, seed: int) -> tuple[list[np.ndarray], list[bytes]]:
    rng = np.random.default_rng(seed)
    images = [make_image(rng, int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))) for _ in range(n)]
    return images, [encode(image, fmt) for image in images]


# ---------------------------------------------------------------- decoders


def pil_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def pil_draft_decode(target: int) -> Callable[[bytes], np.ndarray]:
    """PIL with ``draft``: libjpeg's DCT scaling to the smallest size still >= ``target`` on each side."""
    from PIL import Image

    def decode(data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (target, target))
        return np.asarray(image.convert("RGB"))

    return decode


def simplejpeg_decode(data: bytes) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def simplejpeg_reduced_decode(target: int) -> Callable[[bytes], np.ndarray]:
    import simplejpeg

    def decode(data: bytes) -> np.ndarray:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=target, min_width=target)

    return decode


def simplejpeg_fast_decode(data: bytes) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True)


def cv2_decode(flag_name: str = "IMREAD_COLOR") -> Callable[[bytes], np.ndarray]:
    import cv2

    flag = getattr(cv2, flag_name)

    def decode(data: bytes) -> np.ndarray:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return decode


# ---------------------------------------------------------------- resizers


def pil_resize(size: int) -> Callable[[np.ndarray], np.ndarray]:
    from PIL import Image

    def resize(image: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))

    return resize


def pil_resize_reducing_gap(size: int) -> Callable[[np.ndarray], np.ndarray]:
    from PIL import Image

    def resize(image: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))

    return resize


def pil_crop_resize(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """PIL resize of the central 3/4 of the image through ``box``, handing PIL the whole image."""
    from PIL import Image

    def resize(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        box = (w / 8, h / 8, w * 7 / 8, h * 7 / 8)
        return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=box))

    return resize


def window_pil_resize(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The same crop as datarax's operators resize it: only the window and the filter's reach go to PIL."""
    from datarax.operators.host_image import _pil_resize

    def resize(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        return _pil_resize(image, (size, size), (w / 8, h / 8, w * 7 / 8, h * 7 / 8))

    return resize


def operator_decode(min_size: int) -> Callable[[bytes], np.ndarray]:
    """``DecodeImage(DecodeImageConfig(min_size=...))``: simplejpeg at 1/2, 1/4 or 1/8 only."""
    from datarax.operators.host_image import DecodeImage, DecodeImageConfig

    decode = DecodeImage(DecodeImageConfig(min_size=(min_size, min_size)))
    return lambda data: decode.apply({"image": data}, None)["image"]


def cv2_resize(size: int, interpolation: str) -> Callable[[np.ndarray], np.ndarray]:
    import cv2

    flag = getattr(cv2, interpolation)

    def resize(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, (size, size), interpolation=flag)

    return resize


# ---------------------------------------------------------------- the operators themselves


def operator_step(size: int, *, min_size: bool) -> Callable[[tuple], np.ndarray]:
    """``DecodeImage`` then ``HostRandomResizedCrop``, one record at a time, as a pipeline runs them.

    Each record's generator is seeded with the record's number, so the other
    steps below can take the very same windows (``window_inputs``).
    """
    from datarax.operators.host_image import (
        DecodeImage,
        DecodeImageConfig,
        HostRandomResizedCrop,
        HostRandomResizedCropConfig,
    )

    decode = DecodeImage(DecodeImageConfig(min_size=(size, size) if min_size else None))
    crop = HostRandomResizedCrop(HostRandomResizedCropConfig(size=(size, size)))

    def step(item: tuple) -> np.ndarray:
        data, seed, _ = item
        return crop.apply(decode.apply({"image": data}, None), np.random.default_rng(seed))["image"]

    return step


def window_inputs(datas: list[bytes], size: int) -> list[tuple]:
    """``(bytes, seed, window)`` per image: the window ``HostRandomResizedCrop`` draws for it with that seed."""
    from datarax.operators.host_image import HostRandomResizedCrop, HostRandomResizedCropConfig

    crop = HostRandomResizedCrop(HostRandomResizedCropConfig(size=(size, size)))
    items = []
    for seed, data in enumerate(datas):
        height, width = pil_decode(data).shape[:2]
        items.append((data, seed, crop.window(height, width, np.random.default_rng(seed))))
    return items


def window_step(decoder: Callable, resizer: str, size: int) -> Callable[[tuple], np.ndarray]:
    """Decode, then resize the record's window with ``resizer``: "pil" (``box=``), "cv2 linear", "cv2 area",
    or "hybrid" (``cv2`` INTER_LINEAR when neither side shrinks, which matches PIL within 1, else PIL)."""
    import cv2
    from PIL import Image

    bilinear = Image.Resampling.BILINEAR

    def step(item: tuple) -> np.ndarray:
        image = decoder(item[0])
        top, left, h, w = item[2]
        enlarging = h <= size and w <= size
        if resizer == "pil" or (resizer == "hybrid" and not enlarging):
            return np.asarray(Image.fromarray(image).resize((size, size), bilinear, box=(left, top, left + w, top + h)))
        flag = cv2.INTER_AREA if resizer == "cv2 area" else cv2.INTER_LINEAR
        return cv2.resize(image[top : top + h, left : left + w], (size, size), interpolation=flag)

    return step


# ---------------------------------------------------------------- timing


def time_group(methods: dict[str, Callable], inputs: list, *, repeats: int, rounds: int) -> dict[str, float]:
    """Seconds per item of each method: every method warmed up, then alternated round robin; medians."""
    for method in methods.values():
        for item in inputs[:4]:
            method(item)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            for _ in range(rounds):
                for item in inputs:
                    method(item)
            times[name].append((time.perf_counter() - start) / (rounds * len(inputs)))
    return {name: statistics.median(t) for name, t in times.items()}


def max_difference(methods: dict[str, Callable], inputs: list, reference: str) -> dict[str, str]:
    """Largest absolute pixel difference of each method's outputs from ``reference``'s ("-" if shapes differ)."""
    out = {}
    for name, method in methods.items():
        worst = 0
        for item in inputs:
            a, b = methods[reference](item), method(item)
            if a.shape != b.shape:
                worst = None
                break
            worst = max(worst, int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
        out[name] = "-" if worst is None else str(worst)
    return out


def gil_free_share(method: Callable, inputs: list, seconds: float = 0.4) -> float:
    """How much pure-Python work the main thread gets done while a second thread loops over ``method``.

    About 1 when ``method`` releases the GIL (on a machine with a spare core), near 0 when it holds it.
    """
    import threading

    def spin() -> int:
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            count += 1
        return count

    alone = spin()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for item in inputs:
                method(item)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        beside = spin()
    finally:
        stop.set()
        thread.join()
    return beside / alone


def render(title: str, medians: dict[str, float], reference: str, notes: dict[str, str] | None = None) -> str:
    ref = medians[reference]
    header = "| method | images/s | µs/image | speed ÷ " + reference + " |"
    divider = "| --- | --- | --- | --- |"
    if notes is not None:
        header += " max \\|diff\\| vs " + reference + " |"
        divider += " --- |"
    lines = [f"\n**{title}**\n", header, divider]
    for name, t in sorted(medians.items(), key=lambda item: item[1]):
        row = f"| {name} | {1 / t:,.0f} | {1e6 * t:,.0f} | {ref / t:.2f}x |"
        if notes is not None:
            row += f" {notes[name]} |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per method (median)")
    parser.add_argument("--images", type=int, default=64, help="images per set")
    parser.add_argument("--size", type=int, default=224, help="target side of the resizes and reduced decodes")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    if args.repeats < 3 or args.images < 4 or args.size < 1:
        parser.error("--repeats must be at least 3 (medians), --images at least 4 and --size positive")

    import cv2
    import PIL
    import simplejpeg

    cv2.setNumThreads(1)
    size = args.size
    images, jpegs = make_set(args.images, 160, 320, "JPEG", seed=1)
    _, pngs = make_set(args.images, 160, 320, "PNG", seed=1)
    _, large = make_set(max(4, args.images // 8), 800, 1200, "JPEG", seed=2)
    decoded = [pil_decode(data) for data in jpegs]

    sections = []
    decoders = {
        "PIL": pil_decode,
        "PIL draft": pil_draft_decode(size),
        "simplejpeg": simplejpeg_decode,
        "simplejpeg fastdct+fastupsample": simplejpeg_fast_decode,
        "OpenCV": cv2_decode(),
    }
    medians = time_group(decoders, jpegs, repeats=args.repeats, rounds=3)
    diffs = max_difference(decoders, jpegs, "PIL")
    sections.append(render("decode JPEG, sides 160-320 px, quality 90", medians, "PIL", diffs))

    png_decoders = {"PIL": pil_decode, "OpenCV": cv2_decode()}
    medians = time_group(png_decoders, pngs, repeats=args.repeats, rounds=1)
    diffs = max_difference(png_decoders, pngs, "PIL")
    sections.append(render("decode PNG, sides 160-320 px", medians, "PIL", diffs))

    large_decoders = {
        "PIL": pil_decode,
        f"PIL draft to >= {size}": pil_draft_decode(size),
        "simplejpeg": simplejpeg_decode,
        f"simplejpeg min side {size} (any n/8 scale)": simplejpeg_reduced_decode(size),
        f"DecodeImage(min_size=({size}, {size})) (1/2, 1/4, 1/8)": operator_decode(size),
        "OpenCV": cv2_decode(),
        "OpenCV IMREAD_REDUCED_COLOR_2": cv2_decode("IMREAD_REDUCED_COLOR_2"),
    }
    medians = time_group(large_decoders, large, repeats=args.repeats, rounds=1)
    sections.append(render("decode JPEG, sides 800-1200 px (reduced decodes are smaller)", medians, "PIL"))

    resizers = {
        "PIL BILINEAR": pil_resize(size),
        "PIL BILINEAR reducing_gap=2": pil_resize_reducing_gap(size),
        "PIL BILINEAR, box= crop 3/4 of the whole image": pil_crop_resize(size),
        "PIL BILINEAR, box= crop 3/4 of window + margin (datarax)": window_pil_resize(size),
        "cv2 INTER_LINEAR": cv2_resize(size, "INTER_LINEAR"),
        "cv2 INTER_AREA": cv2_resize(size, "INTER_AREA"),
    }
    medians = time_group(resizers, decoded, repeats=args.repeats, rounds=3)
    diffs = max_difference({k: v for k, v in resizers.items() if "crop" not in k}, decoded, "PIL BILINEAR") | {
        k: "-" for k in resizers if "crop" in k
    }
    sections.append(render(f"resize 160-320 px RGB to {size} x {size}", medians, "PIL BILINEAR", diffs))

    items = window_inputs(jpegs, size)
    enlarged = sum(h <= size and w <= size for _, _, (_, _, h, w) in items)
    steps = {
        "DecodeImage + HostRandomResizedCrop": operator_step(size, min_size=False),
        "simplejpeg + PIL resize(box)": window_step(simplejpeg_decode, "pil", size),
        "simplejpeg + cv2 INTER_LINEAR if enlarging, else PIL": window_step(simplejpeg_decode, "hybrid", size),
        "simplejpeg + cv2 INTER_AREA": window_step(simplejpeg_decode, "cv2 area", size),
        "OpenCV decode + cv2 INTER_LINEAR (no antialiasing)": window_step(cv2_decode(), "cv2 linear", size),
        "PIL decode + PIL resize(box)": window_step(pil_decode, "pil", size),
    }
    reference = "DecodeImage + HostRandomResizedCrop"
    medians = time_group(steps, items, repeats=args.repeats, rounds=2)
    diffs = max_difference(steps, items, reference)
    title = (
        f"decode + random resized crop to {size} x {size}, JPEG 160-320 px "
        f"(the same windows; {enlarged} of {len(items)} enlarged on both sides)"
    )
    sections.append(render(title, medians, reference, diffs))

    large_items = window_inputs(large, size)
    steps_large = {
        "DecodeImage + HostRandomResizedCrop": operator_step(size, min_size=False),
        f"DecodeImage(min_size=({size}, {size})) + HostRandomResizedCrop": operator_step(size, min_size=True),
        "simplejpeg + cv2 INTER_AREA": window_step(simplejpeg_decode, "cv2 area", size),
        "OpenCV decode + cv2 INTER_LINEAR (no antialiasing)": window_step(cv2_decode(), "cv2 linear", size),
    }
    medians = time_group(steps_large, large_items, repeats=args.repeats, rounds=1)
    title = f"decode + random resized crop to {size} x {size}, JPEG 800-1200 px"
    sections.append(render(title, medians, reference))

    gil = {name: gil_free_share(method, jpegs) for name, method in decoders.items() if "draft" not in name}
    gil |= {f"resize: {name}": gil_free_share(resizers[name], decoded) for name in ("PIL BILINEAR", "cv2 INTER_LINEAR")}
    lines = ["\n**GIL: Python progress of the main thread while another thread runs the method (1.0 = unhindered)**\n"]
    lines += ["| method | progress |", "| --- | --- |"] + [f"| {name} | {share:.2f} |" for name, share in gil.items()]
    sections.append("\n".join(lines))

    summary = (
        f"\nmachine: {platform.machine()}, python {platform.python_version()}, Pillow {PIL.__version__}, "
        f"simplejpeg {simplejpeg.__version__}, OpenCV {cv2.__version__} (1 thread); "
        f"--repeats {args.repeats}, --images {args.images}, --size {size}"
    )
    text = "\n".join(sections) + "\n" + summary
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
