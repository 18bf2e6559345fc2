"""A roofline for one ``ts+mask`` batch: its FLOPs and bytes, this machine's peaks, augcl's fraction of them.

    python -m benchmarks.roofline --threads 2      # B=128 clips x 10 s on the CPU; writes docs/benchmarks/roofline.*
    python -m benchmarks.roofline --device cuda          # the same on a GPU (writes roofline_cuda.*)

Work, counted from the preset's shapes (``work``): per branch ``frames`` (96) frames of ``n_fft`` (400) samples are
windowed, real-FFT'd (2.5 N log2 N flops a frame, half the 5 N log2 N of a complex FFT), squared (3 flops a bin),
projected on the mel filterbank as a dense matmul (2 * bins * mels a frame, as the reference executes it; the
filterbank is mostly zeros, and the CPU kernels sum its nonzero spans only: ``flops_sparse_mel``) and logged (2 a value); the anchor adds white noise at an SNR (6 flops a sample: two powers, scale, add);
the positive's time stretch is a gather of its frames (no flops) and its masks cost a few flops per log-mel value.
Bytes: ``min`` reads each branch's source samples once and writes the two log-mels; ``as executed`` adds the
noise drawn up front (written, read) and every intermediate of the op sequence written and read once (an upper
estimate on a CPU, where chunks of 32 clips keep some in cache).

Peaks (``peaks``), measured with the same thread count: a float32 matmul (``n`` x ``n``: an achievable FLOP/s, not
the data sheet's) and a large tensor copy (bytes read + written per second). The roofline's bound for the batch is
max(flops / peak FLOP/s, bytes / bandwidth); ``floor`` is the batch's own FFTs, powers and mel matmuls alone in torch
(the parts no implementation of the workload avoids, at the library speed). augcl's time is ``PairAugmenter("ts+mask")``
drawing its parameters too, as ``benchmarks.augment`` times it (the anchor's ~2 M normal draws of noise are in the
time, not in the FLOP count), median of the repetitions.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from augcl import PRESETS, PairAugmenter
from augcl.pair import CPU_CHUNK
from benchmarks import report
from benchmarks.harness import median_s
from benchmarks.throughput import apply_workload_args, workload_args


def work(batch: int = 128, sample_rate: int = 16000) -> dict:
    """FLOPs and bytes of one ``ts+mask`` batch of ``batch`` clips, by stage (see the module docstring)."""
    cfg = PRESETS["ts+mask"](sample_rate)
    mel, frames = cfg.mel, cfg.segment_frames
    n, bins, mels = mel.n_fft, mel.n_fft // 2 + 1, mel.n_mels
    context = n // 2 if mel.center else 0
    anchor_samples = cfg.segment_samples + 2 * context
    rate = cfg.positive.stretch.rate_bound
    positive_samples = math.ceil((frames - 1) * mel.hop_length * rate) + mel.win_length  # the most a stretch reads
    per_frame = {"window": mel.win_length, "rfft": 2.5 * n * math.log2(n), "power": 3 * bins,
                 "mel matmul": 2 * bins * mels, "log": 2 * mels}
    mask = cfg.positive.mask
    flops = {k: 2 * frames * v for k, v in per_frame.items()}  # both branches
    flops["noise"] = 6 * anchor_samples
    flops["masks"] = (3 * (mask.n_time_masks + mask.n_freq_masks) + 1) * mels * frames
    flops = {k: batch * v for k, v in flops.items()}
    # the CPU kernels sum each mel band over its nonzero span only (augcl.kernels.mel_cpu)
    from augcl import LogMel
    nonzero = int((LogMel(mel, sample_rate).filterbank != 0).sum())
    sparse = dict(flops, **{"mel matmul": batch * 2 * frames * 2 * nonzero})
    f32, c64 = 4, 8
    out = 2 * mels * frames * f32
    minimum = anchor_samples * f32 + positive_samples * f32 + out
    # every intermediate written once and read once: frames, windowed frames, spectrum, power, mel, log (both branches);
    # the noise (drawn in sample) and the noisy segment; one copy per mask
    inter = 2 * frames * (2 * n * f32 + bins * c64 + bins * f32 + 2 * mels * f32) + 2 * anchor_samples * f32 \
        + (mask.n_time_masks + mask.n_freq_masks) * mels * frames * f32
    executed = minimum + anchor_samples * f32 + 2 * inter
    return {"batch": batch, "flops": flops, "total_flops": sum(flops.values()), "bytes_min": batch * minimum,
            "flops_sparse_mel": sparse, "total_flops_sparse_mel": sum(sparse.values()),
            "bytes_executed": batch * executed,
            "shapes": {"frames": frames, "n_fft": n, "bins": bins, "mels": mels, "anchor_samples": anchor_samples,
                       "positive_samples_max": positive_samples}}


def peaks(device: torch.device, matmul_n: int = 2048, copy_mb: int = 256, repeats: int = 5) -> dict:
    """Achievable float32 FLOP/s (``matmul_n`` square matmul) and copy bandwidth (bytes read + written / s)."""
    a = torch.randn(matmul_n, matmul_n, device=device)
    b = torch.randn(matmul_n, matmul_n, device=device)
    c = torch.empty(matmul_n, matmul_n, device=device)
    t_mm = median_s(lambda: torch.matmul(a, b, out=c), repeats, device=device)
    src = torch.ones(copy_mb * 2 ** 20 // 4, device=device)
    dst = torch.empty_like(src)
    t_copy = median_s(lambda: dst.copy_(src), repeats, device=device)
    return {"matmul_flops_per_s": 2 * matmul_n ** 3 / t_mm, "copy_bytes_per_s": 2 * src.numel() * 4 / t_copy,
            "matmul_n": matmul_n, "copy_mb": copy_mb}


def floor(batch: int, device: torch.device, repeats: int = 5) -> float:
    """Seconds for the batch's FFTs, powers and dense mel matmuls alone (both branches), in torch, chunk by chunk as
    augcl's reference runs them (``CPU_CHUNK`` clips on a CPU, the whole batch elsewhere): no crop, noise, window,
    log or mask."""
    cfg = PRESETS["ts+mask"](16000).mel
    chunk = CPU_CHUNK if device.type == "cpu" else batch
    frames = torch.randn(2 * batch, 96, cfg.win_length, device=device)
    fb_t = torch.rand(cfg.n_mels, cfg.n_fft // 2 + 1, device=device)

    def run():
        for part in frames.split(chunk):
            spec = torch.fft.rfft(part, n=cfg.n_fft).transpose(-1, -2)
            fb_t @ torch.square(spec.real).addcmul_(spec.imag, spec.imag)

    return median_s(run, repeats, device=device)


def augcl_time(batch: int, seconds: float, device: torch.device, repeats: int = 5) -> float:
    """Median seconds of ``PairAugmenter("ts+mask")`` on ``(batch, seconds * 16 kHz)``, drawing its parameters
    (as ``benchmarks.augment`` times it)."""
    aug = PairAugmenter.from_preset("ts+mask").to(device)
    g = torch.Generator(device=device).manual_seed(0)
    wave = torch.randn(batch, int(seconds * 16000), generator=g, device=device) * 0.1
    return median_s(lambda: aug(wave, generator=g), repeats, device=device)  # after a warm-up call


def analyse(seconds_per_batch: float, device: torch.device, batch: int = 128, quick: bool = False) -> dict:
    """The roofline of a ``ts+mask`` batch that took ``seconds_per_batch``: work, peaks, bound and fractions."""
    w = work(batch)
    pk = peaks(device, *((256, 16, 2) if quick else (8192, 1024, 5) if device.type == "cuda" else (2048, 256, 5)))
    fl = floor(batch, device, 2 if quick else 5)
    t_flops = w["total_flops"] / pk["matmul_flops_per_s"]
    t_bytes = {k: w[k] / pk["copy_bytes_per_s"] for k in ("bytes_min", "bytes_executed")}
    t_sparse = w["total_flops_sparse_mel"] / pk["matmul_flops_per_s"]
    return {"work": w, "peaks": pk, "floor_s": fl, "augcl_s": seconds_per_batch,
            "bound_s": max(t_flops, t_bytes["bytes_min"]), "flops_bound_s": t_flops,
            "bound_sparse_mel_s": max(t_sparse, t_bytes["bytes_min"]),
            "bytes_bound_s": t_bytes, "achieved_flops_per_s": w["total_flops"] / seconds_per_batch,
            "fraction_of_peak_flops": t_flops / seconds_per_batch,
            "fraction_of_bandwidth": {k: v / seconds_per_batch for k, v in t_bytes.items()},
            "intensity_flops_per_byte": {k: w["total_flops"] / w[k] for k in ("bytes_min", "bytes_executed")}}


def text(r: dict) -> str:
    """The roofline in two sentences (for augment.md and roofline.md)."""
    w, pk = r["work"], r["peaks"]
    f = w["flops"]
    balance = pk["matmul_flops_per_s"] / pk["copy_bytes_per_s"]

    def bound(intensity: float) -> str:
        return "compute" if intensity > balance else "memory"
    return (f"A `ts+mask` batch (B={w['batch']}) is {w['total_flops'] / 1e9:.2f} GFLOP (mel matmul "
            f"{f['mel matmul'] / 1e9:.2f}, real FFTs {f['rfft'] / 1e9:.2f}, the rest "
            f"{(w['total_flops'] - f['mel matmul'] - f['rfft']) / 1e9:.2f}) "
            f"and moves {w['bytes_min'] / 1e6:.0f} MB at least ({w['bytes_executed'] / 1e6:.0f} MB if every "
            "intermediate "
            f"went to memory): {r['intensity_flops_per_byte']['bytes_min']:.0f} FLOP/byte "
            f"({r['intensity_flops_per_byte']['bytes_executed']:.1f} as executed) against a machine balance of "
            f"{balance:.1f} FLOP/byte: {bound(r['intensity_flops_per_byte']['bytes_min'])}-bound at the least traffic, "
            f"{bound(r['intensity_flops_per_byte']['bytes_executed'])}-bound as executed. This machine's "
            f"achievable peaks: {pk['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s (float32 matmul {pk['matmul_n']}^3), "
            f"{pk['copy_bytes_per_s'] / 1e9:.1f} GB/s (copy of {pk['copy_mb']} MB), so the roofline bound is "
            f"{r['bound_s'] * 1e3:.1f} ms a batch; the batch's FFTs, powers and mel matmuls alone take "
            f"{r['floor_s'] * 1e3:.1f} ms in torch. augcl takes {r['augcl_s'] * 1e3:.1f} ms: "
            f"{r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s, {100 * r['fraction_of_peak_flops']:.0f} % of the matmul "
            f"peak; that floor is {100 * r['floor_s'] / r['augcl_s']:.0f} % of its time, and augcl's time is "
            f"{r['augcl_s'] / r['bound_s']:.1f}x the bound. The CPU kernels sum each mel band over its nonzero span "
            f"only ({w['flops_sparse_mel']['mel matmul'] / 1e9:.3f} GFLOP instead of {f['mel matmul'] / 1e9:.2f}): for "
            f"the work they execute, {w['total_flops_sparse_mel'] / 1e9:.2f} GFLOP, the bound is "
            f"{r['bound_sparse_mel_s'] * 1e3:.1f} ms (augcl's time is {r['augcl_s'] / r['bound_sparse_mel_s']:.1f}x it).")


def page(r: dict, command: str) -> str:
    """The results page of :func:`analyse`'s ``r`` (with its ``machine``), run by ``command``."""
    return f"# Roofline of a ts+mask batch\n\n`{command}`\n\n{report.machine_text(r['machine'])}.\n\n{text(r)}\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    workload_args(p, "B=4, 2-s clips, small peaks; writes nothing")
    args = p.parse_args(argv)
    apply_workload_args(args)
    device = torch.device(args.device)
    r = analyse(augcl_time(args.batch, args.seconds, device, args.repeats), device, args.batch, args.quick)
    r["machine"] = report.machine_info(device)
    command = (f"python -m benchmarks.roofline --batch {args.batch} --seconds {args.seconds:g} --repeats {args.repeats} "
               f"--device {args.device}" + (f" --threads {args.threads}" if args.threads else ""))
    body = page(r, command)
    print(body)
    if not args.quick:
        report.write(r, body, args.out, report.page_name("roofline", args.device))
    else:
        print(json.dumps({k: v for k, v in r.items() if k != "work"}, indent=1, default=str)[:2000])
    return r


if __name__ == "__main__":
    main()
