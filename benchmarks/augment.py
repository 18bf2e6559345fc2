"""augcl against the libraries people use today, on the paper's workload, in one process.

    python -m benchmarks.augment                     # B=128 clips x 10 s at 16 kHz, CPU; writes docs/benchmarks/augment.*
    python -m benchmarks.augment --device cuda       # the same on a GPU (audiomentations stays on the CPU)
    python -m benchmarks.augment --quick             # tiny, checks the benchmark runs (writes nothing)

Workloads (DESIGN.md section 1): anchor = a 96-frame segment + white noise at 5-30 dB SNR -> 64-bin log-mel;
positive = time stretch (p = 0.5, rate 0.9 or 1.1) before the segment is chosen -> [RIR for ``all``] ->
log-mel -> 2 time masks (<= 12 frames) + 2 frequency masks (<= 8 bins). Output: two (B, 1, 64, 96) log-mels.

Chains, each written as a careful user of that library would write it (``CHAINS`` says the same on the results page):

* ``augcl[auto|torch|kernels]``: ``PairAugmenter`` of the preset with that backend (``auto``, the default, is
  what users get; ``kernels`` only where a kernel runs on the device). Every preset; the other chains run the
  paper's two workloads, ``ts+mask`` and ``all``.
* ``torchaudio`` (crop first): crop by index, ``functional.add_noise``, log-mel (``Spectrogram`` + ``MelScale``, the
  power as re² + im²); the positive grouped by rate (``TimeStretch`` takes one fixed rate per call), each row
  cropped to the ``rate * 95 + 2`` STFT frames its stretched segment needs, ``Spectrogram(power=None)`` of the
  crop, ``TimeStretch``, 96 frames, ``MelScale``, log; for ``all``: ``InverseSpectrogram`` to the segment,
  ``functional.fftconvolve``, log-mel; then ``TimeMasking``/``FrequencyMasking`` with ``iid_masks``. (One STFT of
  the widest crop for every row, stretched group by group, and chunks of 32 clips were measured no faster.)
* ``torchaudio[whole clip]``: the same with the positive's STFT (and inverse STFT) of the whole 10-s clip, a
  96-frame window of it after the stretch (the earlier version of this benchmark; ``--no-whole-clip`` drops it).
* ``torch-audiomentations``: the crop-first chain with its ``AddColoredNoise`` (white) and ``ApplyImpulseResponse``
  (IRs written to a temporary folder) (it has no time stretch, no mel, no masks).
* ``audiomentations``: clip by clip, ``AddGaussianSNR``, ``TimeStretch`` (librosa phase vocoder, on only the
  source region the segment needs), ``ApplyImpulseResponse``, librosa's mel; its spectrogram masks are gone in
  0.43, so the masks are two lines of numpy.

The headline (``strongest``) is augcl[auto] against each library's fastest chain. With ``ts+mask`` in the run, the
roofline of its batch (``benchmarks.roofline``) is computed from augcl[auto]'s time.

Every chain gets the same input. Warm-up excluded; repetitions interleaved, in a new random order every round,
each timed call right after an untimed call of the same chain (its steady state, as in a training loop, not
the state the previous chain left); medians. The ratio is each anchor's time over augcl[auto]'s. A stage breakdown of augcl (``breakdown``) shows where its time goes.
"""
from __future__ import annotations

import argparse
import math
import platform
import shutil
import statistics
import tempfile
from dataclasses import replace
from functools import partial
from importlib.metadata import version
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from augcl import PRESETS, PairAugmenter, kernels
from augcl.banks import RIRBank, RoomSimConfig
from augcl.transforms import RIRConfig
from benchmarks import report, roofline
from benchmarks.harness import median_s, time_calls
from benchmarks.throughput import apply_workload_args, workload_args

SR, N_FFT, HOP, N_MELS, FRAMES = 16000, 400, 160, 64, 96
SEGMENT = (FRAMES - 1) * HOP  # 15,200 samples: 96 centred frames
RATES = (0.9, 1.1)


def write_irs(folder: Path, n: int = 16) -> Path:
    """``n`` simulated room IRs as wav files, so every chain reads the same rooms."""
    bank = RIRBank.simulated(RoomSimConfig(n_rooms=n), SR)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(len(bank)):
        sf.write(str(folder / f"ir{k:02d}.wav"), bank.irs[k, : int(bank.lengths[k])].numpy(), SR, subtype="FLOAT")
    return folder


def draw(batch: int, length: int, g: torch.Generator) -> dict:
    """The per-example parameters the hand-written chains use (augcl draws its own, the same distributions)."""
    stretch = torch.rand(batch, generator=g) < 0.5
    rate = torch.where(torch.rand(batch, generator=g) < 0.5, RATES[0], RATES[1])
    return {"anchor_start": torch.randint(0, length - SEGMENT, (batch,), generator=g),
            "snr_db": torch.rand(batch, generator=g) * 25 + 5,
            "rate": torch.where(stretch, rate, torch.ones(batch)),
            "u": torch.rand(batch, generator=g), "ir": torch.randint(0, 1 << 30, (batch,), generator=g)}


def _torchaudio_file_io_shim() -> None:
    """torch-audiomentations reads IR files with ``torchaudio.info``/``torchaudio.load``, which torchaudio 2.9+
    removed; give it soundfile-backed stand-ins (outside the timed region: IRs are read once and cached)."""
    import types

    import torchaudio

    if hasattr(torchaudio, "info"):
        return

    def info(path):
        i = sf.info(str(path))
        return types.SimpleNamespace(num_frames=i.frames, sample_rate=i.samplerate, num_channels=i.channels)

    def load(path, frame_offset=0, num_frames=-1, **_):
        data, sr = sf.read(str(path), start=frame_offset, frames=num_frames, dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), sr

    torchaudio.info, torchaudio.load = info, load


def source_frames(rate: float, frames: int = FRAMES) -> int:
    """STFT frames of the source that torchaudio's ``TimeStretch`` at ``rate`` needs for ``frames`` output frames:
    output frame ``k`` interpolates source frames ``floor(k * rate)`` and the next one."""
    return frames if rate == 1.0 else math.floor((frames - 1) * rate) + 2


def _power(spec: torch.Tensor) -> torch.Tensor:
    return spec.real.square() + spec.imag.square()


class TorchaudioChain:
    """The workload in torchaudio (optionally torch-audiomentations for noise and IRs).

    ``crop_first=True`` (the strongest chain, what a careful user writes): the positive's STFT is taken of only
    the source samples its stretched segment needs, ``source_frames(rate)`` frames (``rate * 95 + 2``) of
    ``N_FFT`` samples at hop ``HOP``, cut by indexing an ``unfold`` view (no per-row loop); rows of rate 1 skip the
    stretch (and, for ``all``, the STFT/iSTFT round trip: their segment is a plain crop). ``crop_first=False``:
    the STFT (and for ``all`` the inverse STFT) of the whole clip, then a window of it.
    """

    def __init__(self, device, ir_folder: Path, rir: bool, use_tam: bool, crop_first: bool = True):
        import torchaudio.transforms as T

        self.device, self.rir, self.use_tam, self.crop_first = device, rir, use_tam, crop_first
        self.spec = T.Spectrogram(n_fft=N_FFT, hop_length=HOP, power=None).to(device)
        # the crop carries its own context: frames need no padding (the same frames as the clip's, centred)
        self.spec_crop = T.Spectrogram(n_fft=N_FFT, hop_length=HOP, power=None, center=False).to(device)
        self.mel_scale = T.MelScale(N_MELS, SR, 60, 7800, N_FFT // 2 + 1).to(device)
        self.stretch = {r: T.TimeStretch(hop_length=HOP, n_freq=N_FFT // 2 + 1, fixed_rate=r).to(device) for r in RATES}
        self.istft = T.InverseSpectrogram(n_fft=N_FFT, hop_length=HOP).to(device)
        self.tmask, self.fmask = T.TimeMasking(12, iid_masks=True), T.FrequencyMasking(8, iid_masks=True)
        irs = [sf.read(str(p), dtype="float32")[0] for p in sorted(ir_folder.glob("*.wav"))]
        # one zero-padded (N, 1 s) tensor, so picking each example's IR is an index, not a loop
        self.irs = torch.stack([torch.from_numpy(np.pad(h[:SR], (0, SR - len(h[:SR])))) for h in irs]).to(device)
        if use_tam:
            import torch_audiomentations as tam

            _torchaudio_file_io_shim()
            self.tam_noise = tam.AddColoredNoise(5, 30, min_f_decay=0, max_f_decay=0, p=1.0, sample_rate=SR,
                                                 output_type="tensor")
            self.tam_ir = tam.ApplyImpulseResponse(str(ir_folder), p=1.0, sample_rate=SR, output_type="tensor",
                                                   compensate_for_propagation_delay=True)

    def __call__(self, wave: torch.Tensor, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
        positive = self.positive(wave, p)
        return self.anchor(wave, p), self.fmask(self.fmask(self.tmask(self.tmask(positive))))

    def anchor(self, wave: torch.Tensor, p: dict) -> torch.Tensor:
        rows = torch.arange(wave.shape[0], device=wave.device)
        seg = wave.unfold(-1, SEGMENT, 1)[rows, p["anchor_start"].to(wave.device)]
        if self.use_tam:
            seg = self.tam_noise(seg[:, None])[:, 0]
        else:
            import torchaudio.functional as F

            seg = F.add_noise(seg, torch.randn_like(seg), p["snr_db"].to(wave.device))
        return self._log_mel(seg)[:, None]

    def _log_mel(self, seg: torch.Tensor) -> torch.Tensor:
        """``MelSpectrogram`` + log, with the power from re² + im² (``Spectrogram(power=2)`` takes a complex abs, a
        hypot per bin, then squares it: ~10 % of a log-mel on a CPU)."""
        return torch.log(self.mel_scale(_power(self.spec(seg))) + 1e-6)

    def positive(self, wave: torch.Tensor, p: dict) -> torch.Tensor:
        """The positive's log-mels before the masks ``(B, 1, N_MELS, FRAMES)``."""
        positive = torch.empty(wave.shape[0], 1, N_MELS, FRAMES, device=wave.device)
        for r in (1.0,) + RATES:  # one rate per call: group the batch by rate (the rates are drawn on the host)
            idx = (p["rate"] == r).nonzero().flatten()
            if len(idx) == 0:
                continue
            part = self._crop_first if self.crop_first else self._whole_clip
            positive[idx.to(wave.device), 0] = part(wave, idx, p, r)
        return positive

    def _crop_first(self, wave: torch.Tensor, idx: torch.Tensor, p: dict, r: float) -> torch.Tensor:
        n_in = source_frames(r)
        if self.rir:  # centred frames, so that the inverse STFT gives the segment back
            width = SEGMENT if r == 1.0 else (n_in - 1) * HOP
        else:  # uncentred frames of a crop with the context: the clip's centred frames, no padding
            width = (n_in - 1) * HOP + N_FFT
        start = (p["u"][idx] * (wave.shape[-1] - width)).long()
        crop = wave.unfold(-1, width, 1)[idx.to(wave.device), start.to(wave.device)]
        if not self.rir:
            spec = self.spec_crop(crop)
            if r != 1.0:
                spec = self.stretch[r](spec)[..., :FRAMES]
            return torch.log(self.mel_scale(_power(spec)) + 1e-6)
        seg = crop if r == 1.0 else self.istft(self.stretch[r](self.spec(crop))[..., :FRAMES], length=SEGMENT)
        return self._rir_log_mel(seg, idx, p)

    def _whole_clip(self, wave: torch.Tensor, idx: torch.Tensor, p: dict, r: float) -> torch.Tensor:
        spec = self.spec(wave[idx.to(wave.device)])
        if r != 1.0:
            spec = self.stretch[r](spec)
        n = spec.shape[-1]
        first = (p["u"][idx] * (n - FRAMES)).long()
        if not self.rir:  # stay in the spectral domain: a window of the stretched STFT -> mel
            frames = spec.gather(-1, (first[:, None] + torch.arange(FRAMES))[:, None, :].to(wave.device)
                                 .expand(-1, spec.shape[1], -1))
            return torch.log(self.mel_scale(_power(frames)) + 1e-6)
        y = self.istft(spec)
        start = (first * HOP).to(wave.device)
        seg = y.gather(1, start[:, None] + torch.arange(SEGMENT, device=wave.device))
        return self._rir_log_mel(seg, idx, p)

    def _rir_log_mel(self, seg: torch.Tensor, idx: torch.Tensor, p: dict) -> torch.Tensor:
        if self.use_tam:
            seg = self.tam_ir(seg[:, None])[:, 0]
        else:
            import torchaudio.functional as F

            h = self.irs[(p["ir"][idx] % len(self.irs)).to(seg.device)]
            seg = F.fftconvolve(seg, h)[:, :SEGMENT]
        return self._log_mel(seg)


class AudiomentationsChain:
    """Clip by clip in numpy, as audiomentations is used."""

    def __init__(self, ir_folder: Path, rir: bool):
        import audiomentations as am

        self.rir = rir
        self.noise = am.AddGaussianSNR(min_snr_db=5, max_snr_db=30, p=1.0)
        self.stretch = {r: am.TimeStretch(min_rate=r, max_rate=r, leave_length_unchanged=False, p=1.0,
                                          method="librosa_phase_vocoder") for r in RATES}
        self.ir = am.ApplyImpulseResponse(str(ir_folder), p=1.0, leave_length_unchanged=True)

    @staticmethod
    def _logmel(x: np.ndarray) -> np.ndarray:
        import librosa

        m = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, fmin=60,
                                           fmax=7800, htk=True, norm=None)
        return np.log(m + 1e-6)

    def __call__(self, wave: np.ndarray, p: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        anchors, positives = [], []
        for i, x in enumerate(wave):
            s = int(p["anchor_start"][i])
            anchors.append(self._logmel(self.noise(x[s:s + SEGMENT], SR)))
            r = round(float(p["rate"][i]), 4)
            src = int(np.ceil(SEGMENT * r)) + N_FFT  # only the source region the stretched segment needs
            s = int(p["u"][i] * (len(x) - src))
            seg = x[s:s + src]
            if r != 1.0:
                seg = self.stretch[r](seg, SR)
            seg = seg[:SEGMENT]
            if self.rir:
                seg = self.ir(seg, SR)
            spec = self._logmel(seg)
            for _ in range(2):
                t, f = rng.integers(0, 13), rng.integers(0, 9)
                t0, f0 = rng.integers(0, FRAMES - t + 1), rng.integers(0, N_MELS - f + 1)
                spec[:, t0:t0 + t] = spec.mean()
                spec[f0:f0 + f, :] = spec.mean()
            positives.append(spec)
        return np.stack(anchors)[:, None], np.stack(positives)[:, None]


ANCHORED = ("ts+mask", "all")  # the workloads the other libraries' chains are written for
WHOLE_CLIP = "torchaudio[whole clip]"
#: each library's chains: the headline ratio is against the fastest of them
LIBRARIES = {"torchaudio": ("torchaudio", WHOLE_CLIP), "torch-audiomentations": ("torch-audiomentations",),
             "audiomentations": ("audiomentations",)}


def backends(device: torch.device) -> list:
    """augcl's backends to measure on ``device``: auto (the default), the torch reference, the kernels if they run."""
    return ["auto", "torch"] + (["kernels"] if kernels.available(device) else [])


def _augmenter(preset: str, ir_folder: Path, device, backend: str) -> PairAugmenter:
    config = PRESETS[preset](SR)
    if config.positive.rir is not None:  # every chain convolves with the same IR files
        config = replace(config, positive=replace(config.positive, rir=RIRConfig(folder=str(ir_folder))))
    return PairAugmenter(config, backend=backend).to(device)


def breakdown(aug: PairAugmenter, wave: torch.Tensor, repeats: int) -> dict:
    """Seconds per batch of each part of augcl's pipeline, each timed alone: the draws (``sample``), then the calls one
    forward pass makes, recorded from a real ``aug(x, params=params)`` and replayed on the arguments it gave them: each
    branch's log-mels of the batch: its mel energies chunk by chunk (``PairAugmenter._mel_energies``:
    ``Branch.mel_energy`` on each of :meth:`PairAugmenter.chunks`, the branch's own kernels) and their log, and its
    masks on the batch (``mask.apply``). Nothing of
    the pipeline's dispatch is written here again. ``benchmarks.profile`` splits them op by op."""
    device = wave.device
    x = wave.to(torch.float32)
    g = torch.Generator(device=device).manual_seed(1)
    B, T = x.shape
    params = aug.sample(B, T, g, device)
    stages = {"sample": lambda: aug.sample(B, T, g, device)}
    stages |= pipeline_calls(aug, x, params)
    out = {name: median_s(fn, repeats, device=device) for name, fn in stages.items()}  # each after a warm-up call
    out["whole pipeline"] = median_s(lambda: aug(x, params=params), repeats, warmup=0, device=device)
    return out


def pipeline_calls(aug: PairAugmenter, x: torch.Tensor, params: dict) -> dict:
    """``{"anchor": f, ["anchor masks": f,] "positive": f, ["positive masks": f]}``: the calls ``aug(x, params=params)``
    makes, bound to the arguments that forward pass gave them (recorded by wrapping the methods on these instances for
    one call): a branch's log-mels are its ``PairAugmenter._mel_energies`` (``Branch.mel_energy`` chunk by chunk, the
    log taken inside, in the fused kernel where it runs) and, where forward takes the log after it (the overflow
    rescue's gain), that ``LogMel.log``; its masks ``mask.apply`` (in place: on a copy of their input made in each
    replay)."""
    events, calls, inside = [], {}, [False]
    names = {id(aug.anchor): "anchor", id(aug.positive): "positive"}

    def recording_energies(method):
        def record(*args, **kwargs):
            events.append(("energies", names[id(args[0])], partial(method, *args, **kwargs)))
            inside[0] = True
            try:
                return method(*args, **kwargs)
            finally:
                inside[0] = False
        return record

    def recording_log(method, mel):
        def record(*args, **kwargs):
            if not inside[0]:  # a log of forward's own, after a branch's energies
                events.append(("log", mel, (args, kwargs)))
            return method(*args, **kwargs)
        return record

    masks = {name: b.mask for name, b in (("anchor", aug.anchor), ("positive", aug.positive)) if b.mask is not None}
    mels = {id(b.mel): b.mel for b in (aug.anchor, aug.positive)}  # one LogMel the two branches share
    aug._mel_energies = recording_energies(aug._mel_energies)
    def masking(method, name):  # masks written in place are replayed on a fresh copy of their input (timed with them)
        def record(spec, *args, **kwargs):
            if kwargs.get("inplace"):
                saved = spec.clone()
                calls[f"{name} masks"] = lambda: method(saved.clone(), *args, **kwargs)
            else:
                calls[f"{name} masks"] = partial(method, spec, *args, **kwargs)
            return method(spec, *args, **kwargs)
        return record

    for name, mask in masks.items():  # instance attributes: the classes' methods stay as they are
        mask.apply = masking(mask.apply, name)
    for mel in mels.values():
        mel.log = recording_log(mel.log, mel)
    try:
        aug(x, params=params)
    finally:
        del aug._mel_energies
        for mask in masks.values():
            del mask.apply
        for mel in mels.values():
            del mel.log
    branches, name = {}, None
    for kind, a, b in events:
        if kind == "energies":
            name, branches[a] = a, b
        else:  # the log applies to the energies just computed
            branches[name] = partial(lambda e, m, r: m.log(e(), *r[0][1:], **r[1]), branches[name], a, b)
    if sorted(branches) != ["anchor", "positive"]:
        raise RuntimeError(f"expected one PairAugmenter._mel_energies call per branch, recorded {sorted(branches)}")
    calls.update(branches)
    return {k: calls[k] for k in ("anchor", "anchor masks", "positive", "positive masks") if k in calls}


def run(presets, batch: int, seconds: float, repeats: int, device: torch.device, workdir: Path,
        whole_clip: bool = True) -> dict:
    """Every chain of every preset, interleaved; ``whole_clip``: also the whole-clip torchaudio chain (a slow row)."""
    ir_folder = write_irs(workdir / "irs")
    g = torch.Generator().manual_seed(0)
    wave = (torch.randn(batch, int(seconds * SR), generator=g) * 0.1).clamp(-1, 1)
    wave_dev, wave_np = wave.to(device), wave.numpy()
    rng = np.random.default_rng(0)
    results, stages, headline = {}, {}, {}
    for preset in presets:
        rir = preset == "all"
        chains = {}
        for backend in backends(device):
            aug = _augmenter(preset, ir_folder, device, backend)
            gen = torch.Generator(device=device).manual_seed(0)
            chains[f"augcl[{backend}]"] = lambda a=aug, gg=gen: a(wave_dev, generator=gg)
        if preset in ANCHORED:
            hand = {"torchaudio": TorchaudioChain(device, ir_folder, rir, use_tam=False),
                    "torch-audiomentations": TorchaudioChain(device, ir_folder, rir, use_tam=True)}
            chains |= {name: (lambda c=c: c(wave_dev, draw(batch, wave.shape[1], g))) for name, c in hand.items()}
            am = AudiomentationsChain(ir_folder, rir)
            chains["audiomentations"] = lambda am=am: am(wave_np, draw(batch, wave.shape[1], g), rng)
            if whole_clip:
                whole = TorchaudioChain(device, ir_folder, rir, use_tam=False, crop_first=False)
                chains[WHOLE_CLIP] = lambda c=whole: c(wave_dev, draw(batch, wave.shape[1], g))
        # warm-up (allocator, FFT plans, JIT, IR caches): two rounds (in a first trial the first preset measured after
        # one warm-up call ran 2x slow), every output checked; then every chain once a round in a new random order,
        # each timed call right after an untimed call of the same chain: a chain timed right after audiomentations'
        # numpy ran up to 1.5x slower (the allocator's state); after a call of its own it is in its steady state
        times = time_calls(chains, repeats, warmup=2, device=device, steady=True,
                           check=partial(_check_output, batch=batch))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        results[preset] = {name: {"median_s": med[name], "clips_per_s": batch / med[name],
                                  "ratio_to_augcl": med[name] / med["augcl[auto]"], "times_s": ts}
                           for name, ts in times.items()}
        if preset in ANCHORED:
            headline[preset] = strongest(results[preset])
        stages[preset] = {b: breakdown(_augmenter(preset, ir_folder, device, b), wave_dev, repeats)
                          for b in backends(device)}
    info = report.machine_info(device) | {"python": platform.python_version(), "versions": {
        k: version(k) for k in ("torchaudio", "torch-audiomentations", "audiomentations", "librosa", "numba")}}
    out = {"batch": batch, "seconds": seconds, "repeats": repeats, "machine": info, "results": results,
           "headline": headline, "stages": stages}
    if "ts+mask" in results:  # the roofline of the batch augcl[auto] just ran (benchmarks.roofline)
        out["roofline"] = roofline.analyse(results["ts+mask"]["augcl[auto]"]["median_s"], device, batch,
                                           quick=batch < 32)
    return out


def _check_output(name: str, out, batch: int) -> None:
    """Raise unless a chain's output is two finite ``(batch, 1, N_MELS, FRAMES)`` log-mels."""
    anchor, positive = (out.anchor, out.positive) if hasattr(out, "anchor") else out
    for x in (anchor, positive):
        if tuple(x.shape) != (batch, 1, N_MELS, FRAMES) or not np.isfinite(np.asarray(x.cpu() if
                                                                                       torch.is_tensor(x) else x)).all():
            raise RuntimeError(f"{name} chain made {tuple(x.shape)} (or non-finite) log-mels, "
                               f"expected {(batch, 1, N_MELS, FRAMES)}")


def strongest(chains: dict) -> dict:
    """Each other library's fastest chain in ``chains`` (results of one preset) and its time over augcl[auto]'s."""
    out = {}
    for library, names in LIBRARIES.items():
        present = [n for n in names if n in chains]
        if present:
            best = min(present, key=lambda n: chains[n]["median_s"])
            out[library] = {"chain": best, "median_s": chains[best]["median_s"],
                            "ratio_to_augcl": chains[best]["ratio_to_augcl"]}
    return out


CHAINS = {  # what each chain computes, for the results page (the module docstring says the same)
    "augcl[auto|torch|kernels]": "`PairAugmenter` of the preset with that backend (`auto`, the default, is what users "
    "get): the anchor's 1-s crop + white noise -> log-mel; the positive's frames read at the stretched positions from "
    "the source (no resynthesis; for `all` the phase-locked vocoder makes the waveform, then RIR) -> log-mel -> masks "
    "(filled with the example's mean).",
    "torchaudio": "crop first (the strongest torchaudio chain, what a careful user writes): the anchor's crop by "
    "indexing, `functional.add_noise`, log-mel (`Spectrogram(power=None)`, the power as re² + im², which is faster "
    "than `power=2`'s complex abs, `MelScale`); the positive, grouped by rate (`TimeStretch` takes one rate a "
    "call), crops only the `rate * 95 + 2` STFT frames its stretched segment needs (`unfold` view + index, no loop), "
    "`Spectrogram(center=False, power=None)` of that crop, `TimeStretch`, the first 96 frames, `MelScale`, log; for "
    "`all`: centred frames, `TimeStretch`, `InverseSpectrogram` to the 15,200-sample segment (rows of rate 1: the "
    "plain crop), `functional.fftconvolve` with the IR, log-mel; then `TimeMasking`/`FrequencyMasking` "
    "(`iid_masks`, filled with 0).",
    WHOLE_CLIP: "the same, except that the positive's STFT (for `all` also the inverse STFT) is of the whole clip and "
    "the 96 frames a window of it: what the earlier version of this benchmark ran, ~10x the FFT work.",
    "torch-audiomentations": "the crop-first torchaudio chain with torch-audiomentations' `AddColoredNoise` (white) "
    "for the anchor's noise and `ApplyImpulseResponse` (IRs from a temporary folder) for `all`'s RIR (it has no time "
    "stretch, mel or masks).",
    "audiomentations": "clip by clip in numpy (its way): `AddGaussianSNR`, `TimeStretch` (librosa's phase vocoder) on "
    "only the source region the segment needs (crop first already), `ApplyImpulseResponse`, librosa's mel; its "
    "spectrogram masks are gone in 0.43, so the masks are two lines of numpy.",
}


def write(res: dict, out: Path, device: str) -> str:
    m = res["machine"]
    threads = f" --threads {m['cores']}" if device == "cpu" else ""
    lines = ["# augcl against torchaudio, torch-audiomentations and audiomentations", "",
             (f"`python -m benchmarks.augment --batch {res['batch']} --repeats {res['repeats']} --device {device}"
              f"{threads}`"), "",
             report.machine_text(m) + ", " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ". "
             f"Input ({res['batch']}, {int(res['seconds'] * SR)}) float32; output anchor + positive log-mels "
             "(B, 1, 64, 96). Median of the repetitions, interleaved in a new random order each round, each timed "
             "call right after an untimed call of the same chain, warm-up excluded. Ratio: the chain's time over "
             "augcl[auto]'s (how many times slower than augcl; auto is the default backend and runs the same code as "
             "kernels on the CPU)." +
             (" On a CPU the three augcl chains run the same code except in the vocoder (`all`), so their spread "
              "elsewhere is the noise of the machine." if device == "cpu" else ""), ""]
    if res.get("headline"):
        lines += ["## Headline: augcl[auto] against each library's strongest chain", "",
                  ("Each library's fastest chain of this run (below), its time over augcl[auto]'s. Every chain "
                   "computes the same stages on the same input, each with its library's own algorithms (the time "
                   "stretches differ: see the chains)."), ""]
        lines += report.table([{"preset": f"`{preset}`"} | best for preset, best in res["headline"].items()],
                              ["preset", *LIBRARIES], dict.fromkeys(LIBRARIES, _headline_cell))
        lines += ["", "## The chains", ""] + [f"* `{name}`: {what}" for name, what in CHAINS.items()] + [""]
    if res.get("roofline"):
        lines += ["## Roofline of `ts+mask`", "", roofline.text(res["roofline"]) + " (`python -m benchmarks.roofline`: "
                  "the same computation on its own, `benchmarks/roofline.py` says what is counted.)", ""]
    for preset, chains in res["results"].items():
        rows = [{"chain": name, "median (s/batch)": r["median_s"], "clips/s": r["clips_per_s"],
                 "time / augcl[auto]": r["ratio_to_augcl"]} for name, r in chains.items()]
        lines += [f"## `{preset}`", ""] + report.table(rows, formats={
            "median (s/batch)": "{:.3f}", "clips/s": "{:.1f}", "time / augcl[auto]": "{:.2f}x"}) + [""]
    lines += ["## Where augcl's time goes", "",
              ("Each part timed alone on the same parameters, median, ms per batch: the draws (`sample`), each "
               "branch's log-mels as the pipeline runs them (`Branch.mel_energy` chunk by chunk: crop, noise, stretch, "
               "RIR, framing, FFT and mel, with the branch's own kernels, `PairAugmenter.chunk_size`; then the log of "
               "the batch's energies), the masks "
               "on the batch. `python -m benchmarks.profile` splits a call op by op."), ""]
    for preset, by_backend in res["stages"].items():
        cols = list(next(iter(by_backend.values())))
        lines += [f"### `{preset}`", ""] + report.table(
            [{"backend": backend} | st for backend, st in by_backend.items()], ["backend", *cols],
            dict.fromkeys(cols, lambda s: f"{s * 1e3:.1f}")) + [""]
    return report.write(res, "\n".join(lines), out, report.page_name("augment", device), _plot, "clips/s")


def _headline_cell(best: dict) -> str:
    return f"{best['ratio_to_augcl']:.1f}x (`{best['chain']}`)"


def _plot(res: dict, png: Path) -> None:
    presets = list(res["results"])
    chains = list(dict.fromkeys(c for p in presets for c in res["results"][p]))
    report.bar_chart(png, presets, {name: [res["results"][p][name]["clips_per_s"] if name in res["results"][p] else 0
                                           for p in presets] for name in chains},
                     ylabel="clips/s (log)", log=True,
                     title=f"contrastive pairs per second, B={res['batch']}, {res['machine']['device']}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["noise", "ts", "rir", "mask", "ts+mask", "all"],
                   choices=sorted(set(PRESETS) - {"cola"}), help="the other libraries run on ts+mask and all")
    workload_args(p, "B=4, 2-s clips, 1 repetition; writes nothing")
    p.add_argument("--no-whole-clip", action="store_true", help="leave out the slow whole-clip torchaudio chain")
    args = p.parse_args(argv)
    apply_workload_args(args)
    if args.quick:
        args.presets = [p for p in args.presets if p in ANCHORED]
    workdir = Path(tempfile.mkdtemp(prefix="augcl-bench-augment-"))
    try:
        res = run(args.presets, args.batch, args.seconds, args.repeats, torch.device(args.device), workdir,
                  whole_clip=not args.no_whole_clip)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.quick:
        print(write(res, args.out, args.device))
    else:
        for preset, chains in res["results"].items():
            print(preset, {k: round(v["clips_per_s"], 1) for k, v in chains.items()})
    return res


if __name__ == "__main__":
    main()
