"""RIR and noise banks: loading from files (real recordings and files the test writes), simulation, caching."""
import numpy as np
import pytest
import soundfile as sf
import torch

from augcl import NoiseBank, RIRBank, RoomSimConfig
from augcl.banks import load_audio, prepare_ir

from .conftest import SR, cpu_generator, shared_data


def schroeder_rt60(h: np.ndarray, sr: int) -> float:
    """RT60 from the Schroeder backward integral, extrapolated from the -5 to -25 dB decay (T20)."""
    edc = np.cumsum(h[::-1].astype(np.float64) ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0] + 1e-30)
    i5, i25 = np.argmax(edc_db <= -5), np.argmax(edc_db <= -25)
    return 3.0 * (i25 - i5) / sr


@pytest.fixture
def ir_folder(tmp_path):
    """Three IR files in nested folders (one stereo, one at 48 kHz) plus a corrupt and an empty file."""
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    decay = np.exp(-np.arange(8000) / 800.0)
    h = np.concatenate([np.zeros(40), [1.0], 0.3 * rng.standard_normal(7999) * decay[1:]])
    sf.write(tmp_path / "a" / "room1.wav", h, SR)
    sf.write(tmp_path / "a" / "b" / "room2.flac", np.stack([h, h], axis=1) * 0.5, SR)
    sf.write(tmp_path / "room3.wav", np.repeat(h, 3), 48000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    sf.write(tmp_path / "empty.wav", np.zeros(0), SR)
    return tmp_path


def test_rir_bank_from_folder_aligns_normalizes_and_skips_bad_files(ir_folder, caplog):
    bank = RIRBank.from_folder(ir_folder, SR)
    assert len(bank) == 3  # broken and empty files skipped, with a warning each
    assert sum("skipping" in r.message for r in caplog.records) == 2
    for i in range(3):
        h = bank.irs[i, : bank.lengths[i]].numpy()
        assert int(np.argmax(np.abs(h))) == 0  # direct sound at index 0
        assert np.sum(h.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-5)
        assert torch.all(bank.irs[i, bank.lengths[i] :] == 0)


def test_rir_bank_rejects_folder_without_audio(tmp_path):
    with pytest.raises(ValueError, match="no readable audio"):
        RIRBank.from_folder(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        RIRBank.from_folder(tmp_path / "missing")


def test_load_audio_resamples_with_a_real_resampler(tmp_path):
    t = np.arange(48000) / 48000
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 48000)
    x = load_audio(tmp_path / "tone.wav", SR)
    assert len(x) == SR
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
    assert np.max(np.abs(x[200:-200] - ref[200:-200])) < 1e-2


def test_prepare_ir_cuts_to_max_seconds():
    h = np.exp(-np.arange(40000) / 4000.0)
    out = prepare_ir(h, SR, max_seconds=0.5)
    assert len(out) == 8000 and np.sum(out.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.skipif(not (shared_data() / "rirs" / "audio").is_dir(), reason="shared RIR recordings not present")
def test_real_measured_rirs_load_as_a_bank():
    bank = RIRBank.from_folder(shared_data() / "rirs" / "audio", SR)
    assert len(bank) == 46 and bank.irs.shape[1] <= SR
    rt60 = [schroeder_rt60(bank.irs[i, : bank.lengths[i]].numpy(), SR) for i in range(len(bank))]
    assert 0.05 < np.median(rt60) < 3.0


def test_simulated_bank_has_realistic_decay_and_is_cached(tmp_path):
    cfg = RoomSimConfig(n_rooms=6, seed=3, rt60_s=(0.2, 0.6))
    bank = RIRBank.simulated(cfg, SR, cache=tmp_path)
    assert len(bank) == 6 and len(list(tmp_path.glob("rirs-sim-*.npz"))) == 1
    cached = RIRBank.simulated(cfg, SR, cache=tmp_path)
    assert torch.equal(bank.irs, cached.irs) and torch.equal(bank.lengths, cached.lengths)
    data = np.load(next(tmp_path.glob("rirs-sim-*.npz")))
    for i, target in enumerate(data["rt60_s"]):
        measured = schroeder_rt60(bank.irs[i, : bank.lengths[i]].numpy(), SR)
        # Sabine's formula is approximate for the image-source model; a factor of 2 either way is real-room spread
        assert target / 2 < measured < target * 2.5, (target, measured)
    other = RIRBank.simulated(RoomSimConfig(n_rooms=6, seed=4, rt60_s=(0.2, 0.6)), SR, cache=tmp_path)
    assert not torch.equal(other.irs[:, :100], bank.irs[:, :100])


def test_corrupt_cache_is_rebuilt(tmp_path):
    cfg = RoomSimConfig(n_rooms=2, seed=0, rt60_s=(0.2, 0.3))
    RIRBank.simulated(cfg, SR, cache=tmp_path)
    path = next(tmp_path.glob("rirs-sim-*.npz"))
    path.write_bytes(b"not an npz")
    assert len(RIRBank.simulated(cfg, SR, cache=tmp_path)) == 2


def test_bank_buffers_move_with_the_module():
    bank = RIRBank(torch.randn(3, 10), torch.tensor([10, 5, 7]), SR)
    assert set(dict(bank.named_buffers())) == {"irs", "lengths"}
    moved = bank.to(torch.float64)
    assert moved.irs.dtype == torch.float64 and moved.lengths.dtype == torch.long


def test_noise_bank_reads_with_wraparound(tmp_path):
    clips = [np.linspace(-1, 1, 1000), np.linspace(0, 0.5, 300)]
    for i, c in enumerate(clips):
        sf.write(tmp_path / f"n{i}.wav", c, SR, subtype="FLOAT")
    bank = NoiseBank.from_folder(tmp_path, SR)
    assert len(bank) == 2 and bank.audio.shape == (1300,)
    out = bank.read(torch.tensor([1, 0]), torch.tensor([250, 990]), 700).numpy()
    np.testing.assert_allclose(out[0], np.take(clips[1], np.arange(250, 950), mode="wrap"), atol=1e-7)
    np.testing.assert_allclose(out[1], np.take(clips[0], np.arange(990, 1690), mode="wrap"), atol=1e-7)


@pytest.mark.skipif(not (shared_data() / "noise" / "segments").is_dir(), reason="shared noise recordings not present")
def test_real_background_noise_bank_drives_add_noise_at_the_requested_snr():
    from augcl.transforms import AddNoise, NoiseConfig

    bank = NoiseBank.from_folder(shared_data() / "noise" / "segments", SR)
    assert len(bank) == 55
    noise = AddNoise.from_config(NoiseConfig(kind="bank", snr_db=(0.0, 20.0)), bank=bank, sample_rate=SR)
    x = torch.randn(16, 15200) * 0.1
    params = noise.sample(16, 15200, cpu_generator(0))
    y = noise(x, params=params)
    snr = 10 * torch.log10(x.pow(2).mean(-1) / (y - x).pow(2).mean(-1))
    assert torch.all((snr - params["snr_db"]).abs() < 0.2)
