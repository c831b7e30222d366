"""The JAX log-mel front end against librosa (the reference), in float32 and float64."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import scipy.fft
import scipy.signal

from research.audio import frontend as fe

SONIC_PI_SNARE = "/usr/share/sonic-pi/samples/drum_snare_hard.flac"
# (n_fft, hop, n_mels, sample rate): librosa's defaults at 22.05 kHz and smaller settings.
SETTINGS = [(2048, 512, 128, 22050), (512, 128, 40, 16000), (400, 160, 80, 16000),
            (256, 64, 32, 8000)]


def _signal(kind: str, sr: int, seconds: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    if kind == "chirp":
        return 0.5 * scipy.signal.chirp(t, 100, t[-1], 0.45 * sr, method="linear")
    if kind == "logchirp":
        return 0.8 * scipy.signal.chirp(t, 50, t[-1], 0.4 * sr, method="logarithmic")
    if kind == "noise":
        return 0.1 * np.random.default_rng(0).standard_normal(len(t))
    if kind == "real":
        if not os.path.exists(SONIC_PI_SNARE):
            pytest.skip("sonic-pi-samples is not installed (apt-get install sonic-pi-samples); "
                        f"{SONIC_PI_SNARE} is the real recording of this test")
        y, _ = librosa.load(SONIC_PI_SNARE, sr=sr, duration=seconds)
        return np.pad(y, (0, len(t) - len(y)))
    raise ValueError(kind)


# The front end's functions compiled whole, as `make_frontend` and the data pipeline run them:
# one compilation per setting where an eager call compiles each of its operations.
_stft = jax.jit(fe.stft, static_argnums=(1, 2), static_argnames="center")
_logmel = jax.jit(fe.logmel, static_argnums=(1, 2, 3, 4))
_mfcc = jax.jit(fe.mfcc, static_argnums=(1, 2, 3, 4, 5))
_power_to_db = jax.jit(fe.power_to_db, static_argnames=("ref", "amin", "top_db"))


def _librosa_logmel(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=sr, n_fft=n_fft,
                                         hop_length=hop, n_mels=n_mels)
    return librosa.power_to_db(mel)


def test_hann_window_is_periodic_like_scipy_not_numpy():
    for n in (16, 400, 2048):
        ref = scipy.signal.get_window("hann", n, fftbins=True)
        np.testing.assert_allclose(fe.hann_window(n), ref, atol=1e-15)
        # np.hanning is the symmetric window: a classic pitfall.
        assert np.abs(fe.hann_window(n) - np.hanning(n)).max() > 1e-4


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [
    (22050, 2048, 128, 0.0, None), (16000, 1024, 40, 0.0, None), (16000, 512, 64, 50.0, 7000.0),
    (44100, 4096, 96, 20.0, 16000.0), (8000, 256, 32, 0.0, None)])
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels, fmin, fmax):
    ours = fe.mel_filterbank(sr, n_fft, n_mels, fmin, fmax)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                              dtype=np.float64)
    assert ours.shape == ref.shape == (n_mels, 1 + n_fft // 2)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_mel_scale_matches_librosa_slaney():
    hz = np.array([0.0, 100.0, 999.0, 1000.0, 1001.0, 4000.0, 11025.0])
    np.testing.assert_allclose(fe.hz_to_mel(hz), librosa.hz_to_mel(hz), rtol=1e-12)
    np.testing.assert_allclose(fe.mel_to_hz(fe.hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


def test_dct_matrix_is_scipy_orthonormal_dct2():
    ref = scipy.fft.dct(np.eye(40), type=2, norm="ortho", axis=0)[:13]
    np.testing.assert_allclose(fe.dct_matrix(13, 40), ref, atol=1e-12)
    full = fe.dct_matrix(40, 40)
    np.testing.assert_allclose(full @ full.T, np.eye(40), atol=1e-12)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("n_fft,hop", [(512, 128), (400, 160), (256, 100), (255, 64)])
def test_stft_matches_librosa(n_fft, hop, center):
    x = _signal("noise", 16000, 0.2).astype(np.float32)
    ref = librosa.stft(x.astype(np.float64), n_fft=n_fft, hop_length=hop, center=center)
    ours = np.asarray(_stft(jnp.asarray(x), n_fft, hop, center=center))
    assert ours.shape == ref.shape
    assert fe.num_frames(len(x), n_fft, hop, center) == ref.shape[1]
    np.testing.assert_allclose(ours, ref, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("kind", ["chirp", "logchirp", "noise", "real"])
@pytest.mark.parametrize("n_fft,hop,n_mels,sr", SETTINGS)
def test_logmel_float32_matches_librosa(kind, n_fft, hop, n_mels, sr):
    x = _signal(kind, sr).astype(np.float32)
    ref = _librosa_logmel(x, sr, n_fft, hop, n_mels)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(_logmel(jnp.asarray(x), sr, n_fft, hop, n_mels))
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    err = np.abs(ours - ref)
    if kind in ("noise", "real"):
        assert err.max() < 1e-3
    else:
        # A chirp puts bands up to 80 dB (top_db) below the peak of a frame; there float32
        # FFT rounding (about 1e-7 of the frame's peak amplitude) is ~1e-3 dB of the band.
        assert err[ref > ref.max() - 70.0].max() < 1e-3
        assert err.max() < 2e-3


@pytest.mark.parametrize("n_fft,hop,n_mels,sr", SETTINGS[:2])
def test_logmel_float64_matches_librosa_to_rounding(n_fft, hop, n_mels, sr):
    # In float64 the only difference left is rounding (librosa stores its mel filters in
    # float32, about 1e-7 relative): the algorithm is librosa's.
    x = _signal("logchirp", sr)
    ref = _librosa_logmel(x, sr, n_fft, hop, n_mels)
    with jax.enable_x64(True):
        ours = np.asarray(_logmel(jnp.asarray(x, jnp.float64), sr, n_fft, hop, n_mels))
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_mfcc_matches_librosa():
    sr, n_fft, hop, n_mels = 16000, 512, 128, 40
    x = _signal("real", sr).astype(np.float32)
    ref = librosa.feature.mfcc(y=x.astype(np.float64), sr=sr, n_mfcc=13, n_fft=n_fft,
                               hop_length=hop, n_mels=n_mels)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(_mfcc(jnp.asarray(x), sr, 13, n_fft, hop, n_mels))
    np.testing.assert_allclose(ours, ref, atol=2e-3)


@pytest.mark.parametrize("ref,amin,top_db", [(1.0, 1e-10, 80.0), ("max", 1e-10, 80.0),
                                             (2.0, 1e-5, None), (1.0, 1e-10, 20.0)])
def test_power_to_db_per_example_matches_librosa_per_clip(ref, amin, top_db):
    rng = np.random.default_rng(1)
    s_BxFxT = rng.exponential(size=(3, 8, 10)) ** 4 * np.array([1.0, 1e-3, 1e3])[:, None, None]
    ours = np.asarray(_power_to_db(jnp.asarray(s_BxFxT, jnp.float32), ref=ref, amin=amin,
                                   top_db=top_db))
    for b in range(3):
        expect = librosa.power_to_db(s_BxFxT[b], ref=np.max if ref == "max" else ref, amin=amin,
                                     top_db=top_db)
        np.testing.assert_allclose(ours[b], expect, atol=1e-4)


def test_make_frontend_batches_and_jits_like_per_clip_calls():
    sr, n_fft, hop, n_mels = 16000, 256, 64, 24
    x_BxT = np.stack([_signal(k, sr, 0.25) for k in ("chirp", "noise", "logchirp")]).astype(
        np.float32)
    f = fe.make_frontend(sr, n_fft, hop, n_mels)
    out = np.asarray(f(jnp.asarray(x_BxT)))
    assert out.shape == (3, n_mels, fe.num_frames(x_BxT.shape[1], n_fft, hop), 1)
    for b in range(3):
        ref = _librosa_logmel(x_BxT[b], sr, n_fft, hop, n_mels)
        assert np.abs(out[b, ..., 0] - ref)[ref > ref.max() - 70].max() < 1e-3
    g = fe.make_frontend(sr, n_fft, hop, n_mels, feature="mfcc", n_mfcc=7)
    assert g(jnp.asarray(x_BxT)).shape == (3, 7, out.shape[2], 1)


def test_cpu_chunking_gives_the_unchunked_result_for_a_ragged_batch():
    sr, n_fft, hop, n_mels = 16000, 256, 64, 24
    x_BxT = np.stack([_signal(k, sr, 0.25) for k in ("chirp", "noise", "logchirp")] * 2)[:5]
    x_BxT = (x_BxT * np.array([1.0, 0.1, 3.0, 0.01, 1.0])[:, None]).astype(np.float32)
    frame_mb = 4 * n_fft * fe.num_frames(x_BxT.shape[1], n_fft, hop) / 1e6
    # Two examples per chunk: five examples make three chunks, the last one padded.
    chunked = fe.make_frontend(sr, n_fft, hop, n_mels, cpu_chunk_mb=2.5 * frame_mb)
    whole = fe.make_frontend(sr, n_fft, hop, n_mels, cpu_chunk_mb=0)
    out = np.asarray(chunked(jnp.asarray(x_BxT)))
    assert out.shape == (5, n_mels, fe.num_frames(x_BxT.shape[1], n_fft, hop), 1)
    np.testing.assert_allclose(out, np.asarray(whole(jnp.asarray(x_BxT))), atol=1e-5)
    # Each example on its own: chunks (and their padding) do not leak into neighbours.
    for i in range(5):
        alone = np.asarray(whole(jnp.asarray(x_BxT[i:i + 1])))[0]
        np.testing.assert_allclose(out[i], alone, atol=1e-5)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="feature"):
        fe.make_frontend(16000, feature="cqt")
    with pytest.raises(ValueError, match="cpu_chunk_mb"):
        fe.make_frontend(16000, cpu_chunk_mb=-1.0)
    with pytest.raises(ValueError, match="amin"):
        fe.power_to_db(jnp.ones((1, 2, 2)), amin=0.0)
    with pytest.raises(ValueError, match="ref"):
        fe.power_to_db(jnp.ones((1, 2, 2)), ref="min")
    with pytest.raises(ValueError, match="shorter than n_fft"):
        fe.stft(jnp.ones((1, 10)), n_fft=64, hop_length=16, center=False)
    with pytest.raises(ValueError, match="fmin"):
        fe.mel_filterbank(16000, 512, 40, fmin=9000.0)


def test_frontend_imports_and_runs_without_librosa():
    code = ("import sys; sys.modules['librosa'] = None\n"
            "import numpy as np\n"
            "from research.audio import frontend as fe\n"
            "x = np.random.default_rng(0).standard_normal((2, 4000)).astype(np.float32)\n"
            "out = fe.make_frontend(16000, 512, 128, 40)(x)\n"
            "assert out.shape == (2, 40, 32, 1), out.shape\n"
            "print('ok')\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_benchmark_script_runs_and_agrees_with_librosa():
    cmd = [sys.executable, "-m", "benchmarks.frontend", "--batch", "2", "--seconds", "0.25",
           "--sample-rate", "8000", "--n-fft", "256", "--hop", "64", "--n-mels", "16",
           "--repeats", "1", "--librosa-clips", "2", "--gen-clips", "10"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)),
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["jax_audio_s_per_s"] > 0 and out["librosa_audio_s_per_s"]["per_clip"] > 0
    assert out["max_abs_diff_db_vs_librosa"] < 1e-3
    assert set(out["generation_4s_16khz"]) == {"soundscapes", "music"}
    assert out["generation_4s_16khz"]["music"]["clips"] == 7  # one per class
    assert out["ratio_jax_over_librosa"]["worst"] <= out["ratio_jax_over_librosa"]["median"]
    # --gen-clips 0 skips generation (the GPU check has no use for it).
    res0 = subprocess.run(cmd[:-1] + ["0"], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)),
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert "generation_4s_16khz" not in json.loads(res0.stdout.strip().splitlines()[-1])


def test_benchmark_single_thread_pins_jax_to_one_cpu():
    # Calls of about 7 ms: with 0.6 ms ones, CPU time that other threads ran just before a
    # call but had not yet been charged for made one run read 1.15 CPUs on one CPU.
    cmd = [sys.executable, "-m", "benchmarks.frontend", "--batch", "16", "--seconds", "2",
           "--sample-rate", "8000", "--n-fft", "256", "--hop", "64", "--n-mels", "16",
           "--repeats", "5", "--librosa-clips", "1", "--gen-clips", "0", "--single-thread"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)),
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "pinned to CPU" in out["threads"] and "librosa: one thread" in out["threads"]
    assert "threads: JAX: process pinned" in res.stdout
    # One CPU cannot give more than one second of CPU time per second (small timer slack).
    assert out["jax_cpu_per_wall_median"] <= 1.1
