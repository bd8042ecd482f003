"""The fast warp's last step on the encoder's device: tiles that the readers left as source
pixels (TileBatch.crops, TileDataset(defer=True)) resampled there, so that a reader process
only reads, cuts and makes thumbnails (job.warp_on). Bilinear by `grid_sample` at the same
sample positions as OpenCV's warpAffine in the readers (indexer/rasters/warp.py), within
1 grey level of it (OpenCV rounds positions to 1/32 px: tests/test_device_warp.py)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from indexer.job.read import LaterThumbs, TileBatch
from indexer.job.thumbnails import jpegs_later, thumbnail_maps

_streams: dict[tuple[torch.device, bool], torch.cuda.Stream] = {}


# True: on CUDA the warp runs on the copy stream, beside the encoder's work queued before it,
# not in line on the encoder's stream (False: in line, for bench/index.py --warp-stream). On
# an H200 the 980,000-tile job went from 0.87 to 0.92 of the encoder alone (BENCHMARKS.md).
WARP_BESIDE = True


def warp_tiles(crops: torch.Tensor, maps: torch.Tensor, px: int,
               scales: torch.Tensor | None = None) -> torch.Tensor:
    """Crops [D, 3, C, C] (uint8, or uint16 pixels as int16, or those already as float32:
    `source_pixels`) and maps [D, 2, 3] (tile pixel (col, row) -> crop pixel, pixel centres
    at integers: warpAffine's inverse map) on one device -> uint8 tiles [D, 3, px, px] there.
    Every sample and its bilinear neighbours are inside its crop (the readers defer only
    such tiles), so the crops' padding is never read. `scales` [D, 2, 3]: (value mapped to
    0, 255 / (value mapped to 255 - it)) per band, applied as the readers' to_uint8 does, to
    the resampled values rounded to the raster's integers as the readers' warp gives them
    (None: uint8 as it is)."""
    d, _, h, w = crops.shape
    m = maps.to(crops.device, torch.float32)
    grid = _grid(m, px, w, h)
    out = F.grid_sample(source_pixels(crops), grid, mode="bilinear", padding_mode="border",
                        align_corners=True).round_()
    if scales is not None:
        out.sub_(scales[:, 0].view(d, 3, 1, 1)).mul_(scales[:, 1].view(d, 3, 1, 1)).round_()
    return out.clamp_(0, 255).to(torch.uint8)


def source_pixels(crops: torch.Tensor) -> torch.Tensor:
    """The crops as the float32 values grid_sample reads (int16 holds uint16 pixels); as
    they are if they are float already (a batch's tiles and thumbnails sample the same
    crops: converted once)."""
    if crops.is_floating_point():
        return crops
    if crops.dtype == torch.uint8:
        return crops.float()
    return crops.int().bitwise_and_(0xFFFF).float()  # int16 -> its uint16 value


def _grid(m: torch.Tensor, px: int, w: int, h: int) -> torch.Tensor:
    """grid_sample's grid [D, px, px, 2] for maps `m` into w x h crops (align_corners=True:
    -1 and 1 are the centres of the first and last pixels). A sample's position is affine in
    its column and row, so each coordinate is a row term plus a column term, both
    [D, px], the normalisation folded into them: one full-size pass per coordinate, written
    in place into the grid."""
    d = len(m)
    # Normalised: x * 2 / (w - 1) - 1. By Python numbers: a tensor of them made on the GPU
    # would be a copy from pageable memory, which waits for the stream's queued encoding.
    k = torch.stack([m[:, 0] * (2 / max(w - 1, 1)), m[:, 1] * (2 / max(h - 1, 1))], dim=1)
    ar = torch.arange(px, device=m.device, dtype=torch.float32)
    grid = torch.empty((d, px, px, 2), device=m.device, dtype=torch.float32)
    for i in (0, 1):
        cols = torch.addcmul((k[:, i, 2] - 1).view(d, 1), k[:, i, 0].view(d, 1), ar)
        rows = k[:, i, 1].view(d, 1) * ar
        torch.add(rows.view(d, px, 1), cols.view(d, 1, px), out=grid[..., i])
    return grid


def encoder_device(encoder) -> torch.device | None:
    """The encoder's torch device (None for a stand-in encoder without one): where the
    job's device work (this warp, thumbnails, k-means) would go."""
    device = getattr(encoder, "device", None)
    return device if isinstance(device, torch.device) else None


def encoder_device_type(encoder) -> str:
    """The type of the encoder's device ("cuda", "cpu"; "cpu" for a stand-in encoder
    without one): what the job's choices by device ask."""
    device = encoder_device(encoder)
    return "cpu" if device is None else device.type


def on_device(choice: str, device: torch.device) -> bool:
    """job.warp_on / job.thumbnails_on: whether the work goes to the encoder's `device`
    ("device": always; "auto": where that is a GPU; "readers": never)."""
    return choice == "device" or (choice == "auto" and device.type == "cuda")


def resample_deferred(batch: TileBatch, device: torch.device,
                      thumbs: tuple[int, int] | None = None) -> TileBatch:
    """The batch with every kept tile in `rgb`, on `device`: the readers' tiles copied there,
    the deferred ones resampled there, in the batch's order. On CUDA the copies run on a
    stream of their own (the encoding of the batch before goes on meanwhile); the returned
    pixels are not views of the batch's host buffers, which are free to reuse on return.
    `thumbs` (size, JPEG quality): the thumbnails the readers left (None in `thumbs`: all
    the deferred tiles' or none) resampled here too, from the same crops, then copied back and
    JPEG-encoded on threads of this process (batch.later_thumbs, thumbnails.jpegs_later)."""
    if batch.deferred is None:
        return batch
    px = batch.rgb.shape[-1]  # [K - D, 3, px, px], K - D >= 0
    # Everything the device needs goes by the copy stream, the small arrays too (a copy
    # from pageable memory on the encoder's stream would wait for the batch it encodes),
    # and rows are placed by index (a boolean mask would wait for the GPU to count it).
    rows, later = np.flatnonzero(~batch.deferred), np.flatnonzero(batch.deferred)
    # The readers left every deferred tile's thumbnail to the device or none (one
    # TileDataset(device_thumbs) makes all of a job's batches).
    left = {batch.thumbs[r] is None for r in later.tolist()}
    if len(left) > 1:
        raise ValueError("resample_deferred: the readers left some deferred tiles' "
                         "thumbnails, not all")
    make = left == {True}
    if make and thumbs is None:
        raise ValueError("resample_deferred: the readers left thumbnails (device_thumbs): "
                         "say their size and quality")
    scales = _factors(batch.scales)
    host = {"maps": torch.from_numpy(np.ascontiguousarray(batch.maps)),
            "rows": torch.from_numpy(rows), "later": torch.from_numpy(later),
            "crops": batch.crops, "rgb": batch.rgb}
    if scales is not None:
        host["scales"] = torch.from_numpy(scales)
    if make:
        host["thumb_maps"] = torch.from_numpy(thumbnail_maps(batch.maps, px, thumbs[0]))
    def resample() -> torch.Tensor:
        dev = dict(zip(host, _to(device, *host.values()), strict=True))
        scale = dev.get("scales")
        out = torch.empty((len(batch.deferred), 3, px, px), dtype=torch.uint8, device=device)
        if len(rows):
            out.index_copy_(0, dev["rows"], dev["rgb"])
        # The tiles and their thumbnails sample the same crops: converted to float once.
        src = source_pixels(dev["crops"]) if make else dev["crops"]
        out.index_copy_(0, dev["later"], warp_tiles(src, dev["maps"], px, scale))
        if make:
            pixels = warp_tiles(src, dev["thumb_maps"], thumbs[0], scale)
            batch.later_thumbs = LaterThumbs(jpegs_later(*_to_host(pixels), thumbs[1]),
                                             np.arange(len(later)), later)
        return out

    if not (WARP_BESIDE and device.type == "cuda"):
        out = resample()
    else:
        # On the copy stream, after the copies: the encoder's stream waits for the tiles only
        # where it uses them, and the warp's kernels run beside the encoding queued before.
        stream, current = _copy_stream(device), torch.cuda.current_stream(device)
        with torch.cuda.stream(stream):
            out = resample()
        current.wait_stream(stream)
        out.record_stream(current)  # made on the copy stream, read on the encoder's
    batch.rgb, batch.crops, batch.maps, batch.scales, batch.deferred = out, None, None, None, None
    return batch


def _factors(scales: np.ndarray | None) -> np.ndarray | None:
    """[D, 2, 3] (value mapped to 0, value mapped to 255) -> (the first, 255 / their
    difference) in float32, as scaling.to_uint8 computes them; None where every tile is
    uint8 as it is."""
    if scales is None:
        return None
    lo, hi = scales[:, 0].astype(np.float32), scales[:, 1].astype(np.float32)
    if not lo.any() and (hi == 255).all():
        return None
    return np.ascontiguousarray(np.stack([lo, 255.0 / (hi - lo)], axis=1), dtype=np.float32)


def _to_host(t: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """(t on the CPU, the event after which it is there: None if it is already). On CUDA
    copied into page-locked memory on the copy stream, once the current stream has made
    it: the current stream goes on with the next encoding meanwhile."""
    if t.device.type != "cuda":
        return t, None
    stream = _copy_stream(t.device, back=True)
    stream.wait_stream(torch.cuda.current_stream(t.device))
    with torch.cuda.stream(stream):
        # Page-locked memory for a power of two of rows: a few sizes, each allocated once
        # and then reused by the host allocator (a new size costs a cudaHostAlloc, ~7 ms).
        rows = 1 << max(0, len(t) - 1).bit_length()
        host = torch.empty((rows, *t.shape[1:]), dtype=t.dtype, pin_memory=True)[:len(t)]
        host.copy_(t, non_blocking=True)
        ready = torch.cuda.Event(blocking=True)  # a thread waiting on it sleeps, not spins
        ready.record(stream)
    t.record_stream(stream)  # its memory is not reused before the copy has read it
    return host, ready


def _copy_stream(device: torch.device, back: bool = False) -> torch.cuda.Stream:
    """The stream of the copies to `device` (or, `back`, from it: a copy back waits for the
    work that makes its tensor, which the next batch's copies there should not)."""
    stream = _streams.get((device, back))
    if stream is None:
        stream = _streams[(device, back)] = torch.cuda.Stream(device)
    return stream


def _to(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Host tensors onto `device`; on CUDA through a copy stream of their own (the current
    stream waits for it, and their memory is not reused while it reads them)."""
    if device.type != "cuda":
        return [t.to(device) for t in tensors]
    stream = _copy_stream(device)
    current = torch.cuda.current_stream(device)
    with torch.cuda.stream(stream):
        # From pageable memory a copy waits for the stream's copies before it: page-locked.
        out = [(t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
               for t in tensors]
    current.wait_stream(stream)
    for t in out:
        t.record_stream(current)
    return out
