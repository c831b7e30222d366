"""Throughput of the JAX log-mel front end against librosa on the same clips, and generation speed.

Prints seconds of audio processed per second of wall time for the jitted JAX front end
(`research.audio.frontend.make_frontend`) on the default JAX device, for librosa on one CPU core
(one clip at a time, and one batched call), their ratio, the largest dB difference between the
two on the measured clips, and how many procedural clips per second `research.data.synth`
generates on one core.

Run:

    python -m benchmarks.frontend                      # defaults: 256 clips of 4 s at 22.05 kHz
    python -m benchmarks.frontend --batch 32 --single-thread   # the process pinned to one CPU
    JAX_PLATFORMS=cuda python -m benchmarks.frontend   # on a GPU

Targets (issue 3): on one H100 at least 1,000,000 s of audio per second for batches of 256
four-second 22.05 kHz clips (n_fft 2048, hop 512, 64 mels), over 1,000x librosa on one core; on
CPU not slower than librosa; at least 200 four-second 16 kHz procedural clips per second.
librosa is optional here (GPU hosts may lack it): without it only the JAX figures print.

Each of the `--repeats` rounds times one JAX call and librosa on the same clips, so that load from
other processes hits both sides of a round's ratio; the median ratio is the headline figure.

Threads: librosa's numpy/BLAS always gets one thread (`OMP_NUM_THREADS` and friends set to 1
before import). `--single-thread` pins the whole process to one CPU with `os.sched_setaffinity`
before JAX is imported: XLA:CPU's thread pool follows the affinity mask, whereas its thread flags
(`--xla_cpu_multi_thread_eigen`, `intra_op_parallelism_threads`) do not limit it in jax 0.10
(CPU time over wall time was 1.89 with them). The output says how threads were limited and
prints the JAX calls' CPU time over wall time.

Measured (2-core AMD EPYC VM, jax 0.10.2, librosa 0.11, defaults): JAX 4,473 s of audio per s
(best; median 4,081), librosa 1,639 (batched call; 1,063 clip by clip), ratio 2.56x median
(worst round 2.22x; an earlier --single-thread figure, 2.77x, used XLA flags that did not
limit XLA:CPU; pinned with sched_setaffinity, --gen-clips 0, load average 2.8: 2.84x median,
worst 1.72x, JAX CPU/wall 0.99), max difference 1.2e-5 dB;
generation 253 soundscape and 306 music clips per CPU second (medians 245 and 302). On CPU
`make_frontend` works through the batch in chunks that fit the cache, which doubled its
throughput. The H100 figure is not measured yet (`benchmarks/device_check.sh`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=256, help="clips per front-end call")
    p.add_argument("--seconds", type=float, default=4.0, help="clip length (s)")
    p.add_argument("--sample-rate", type=int, default=22050, help="clips' sample rate (Hz)")
    p.add_argument("--n-fft", type=int, default=2048, help="STFT window length (samples)")
    p.add_argument("--hop", type=int, default=512, help="STFT hop length (samples)")
    p.add_argument("--n-mels", type=int, default=64, help="mel bands")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds (after one warm-up): JAX, librosa and generation each")
    p.add_argument("--librosa-clips", type=int, default=16,
                   help="clips timed with librosa (a subset of the same batch)")
    p.add_argument("--gen-clips", type=int, default=100,
                   help="procedural clips timed per set (4 s at 16 kHz, default difficulty); "
                   "0 skips generation")
    p.add_argument("--single-thread", action="store_true",
                   help="pin the process (JAX and librosa) to one CPU with os.sched_setaffinity "
                   "before JAX starts")
    return p.parse_args()


def main() -> None:
    """Run the measurements and print them (a JSON line last)."""
    args = _parse()
    # One core for the host libraries (librosa's BLAS, numpy); must precede their import.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if args.single_thread:
        # XLA:CPU sizes and schedules its thread pool by the affinity mask, not by its flags.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cpus = sorted(os.sched_getaffinity(0))
    threads_note = (f"JAX: process pinned to CPU {cpus[0]} (os.sched_setaffinity)"
                    if args.single_thread else
                    f"JAX: XLA:CPU free on {len(cpus)} CPUs")
    threads_note += "; librosa: one thread (OMP/OPENBLAS/MKL_NUM_THREADS=1)"
    import jax
    import numpy as np

    from research.audio import frontend as fe

    try:
        from research.data import synth
    except ImportError as e:  # scipy missing on a bare accelerator host
        synth = None
        missing = str(e)

    result: dict = {"device": str(jax.devices()[0]), "platform": jax.default_backend(),
                    "batch": args.batch, "clip_seconds": args.seconds,
                    "sample_rate": args.sample_rate, "n_fft": args.n_fft, "hop": args.hop,
                    "n_mels": args.n_mels, "single_thread": args.single_thread,
                    "threads": threads_note}
    n = int(round(args.seconds * args.sample_rate))
    rng = np.random.default_rng(0)
    t = np.arange(n) / args.sample_rate
    # Noise plus a chirp per clip, so the spectra are not trivial.
    f0 = rng.uniform(100, 1000, (args.batch, 1))
    x_BxT = (0.1 * rng.standard_normal((args.batch, n))
             + 0.5 * np.sin(2 * np.pi * f0 * t[None, :] * (1 + t[None, :]))).astype(np.float32)
    audio_s = args.batch * args.seconds

    frontend = fe.make_frontend(args.sample_rate, args.n_fft, args.hop, args.n_mels)
    x_dev = jax.device_put(x_BxT)
    try:
        import librosa
    except ImportError:
        librosa = None
        result["librosa"] = "not installed: JAX figures only"
    k = min(args.librosa_clips, args.batch)
    kw = dict(sr=args.sample_rate, n_fft=args.n_fft, hop_length=args.hop, n_mels=args.n_mels)

    def librosa_rates() -> tuple[float, float]:
        t0 = time.perf_counter()
        for i in range(k):
            librosa.power_to_db(librosa.feature.melspectrogram(y=x_BxT[i], **kw))
        per_clip = time.perf_counter() - t0
        t0 = time.perf_counter()
        librosa.power_to_db(librosa.feature.melspectrogram(y=x_BxT[:k], **kw), top_db=None)
        batched = time.perf_counter() - t0
        return k * args.seconds / per_clip, k * args.seconds / batched

    # Rounds alternate JAX and librosa, so that load from other processes, which comes and goes
    # on shared machines, hits both sides of each round's ratio alike.
    jax_rates, lib_rates, ratios, jax_cpu = [], [], [], []
    with jax.default_matmul_precision("highest"):
        t0 = time.perf_counter()
        out = frontend(x_dev).block_until_ready()
        result["jax_compile_and_first_call_s"] = round(time.perf_counter() - t0, 3)
        if librosa is not None:
            librosa_rates()  # warm librosa's caches (filterbank, window)
        for _ in range(args.repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            frontend(x_dev).block_until_ready()
            wall = time.perf_counter() - t0
            jax_rates.append(audio_s / wall)
            jax_cpu.append((time.process_time() - c0) / wall)
            if librosa is not None:
                lib_rates.append(librosa_rates())
                ratios.append(jax_rates[-1] / max(lib_rates[-1]))
    result["jax_audio_s_per_s"] = round(max(jax_rates), 1)
    result["jax_audio_s_per_s_median"] = round(float(np.median(jax_rates)), 1)
    result["jax_cpu_per_wall_median"] = round(float(np.median(jax_cpu)), 2)

    if librosa is not None:
        per_clip, batched = np.asarray(lib_rates).T
        result["librosa_audio_s_per_s"] = {"per_clip": round(float(per_clip.max()), 1),
                                           "batched_call": round(float(batched.max()), 1)}
        result["librosa_clips_timed"] = k
        result["ratio_jax_over_librosa"] = {"median": round(float(np.median(ratios)), 2),
                                            "worst": round(min(ratios), 2),
                                            "best": round(max(ratios), 2)}
        refs = [librosa.power_to_db(librosa.feature.melspectrogram(y=x_BxT[i], **kw))
                for i in range(k)]
        out_np = np.asarray(out[:k, ..., 0])
        diff = max(float(np.abs(out_np[i] - refs[i]).max()) for i in range(k))
        result["max_abs_diff_db_vs_librosa"] = float(f"{diff:.3g}")

    gen = {}
    if synth is None:
        result["generation_4s_16khz"] = f"skipped: {missing}"
    for name in synth.SETS if synth is not None and args.gen_clips > 0 else ():
        per = max(1, args.gen_clips // len(synth.SETS[name]))
        synth.generate(name, range(per), 0, 16000, 4.0)  # warm caches (tail bank, tables)
        rates = []
        for _ in range(args.repeats):
            c0 = time.process_time()
            waves, _, _ = synth.generate(name, range(per), 0, 16000, 4.0)
            rates.append(len(waves) / (time.process_time() - c0))
        gen[name] = {"clips": len(waves), "clips_per_cpu_s": round(max(rates), 1),
                     "clips_per_cpu_s_median": round(float(np.median(rates)), 1)}
    if synth is not None and gen:
        result["generation_4s_16khz"] = gen

    print(f"device: {result['device']}  batch {args.batch} x {args.seconds} s at "
          f"{args.sample_rate} Hz, n_fft {args.n_fft}, hop {args.hop}, {args.n_mels} mels")
    print(f"threads: {threads_note}")
    print(f"JAX front end: {result['jax_audio_s_per_s']:,.0f} s of audio per s "
          f"(best of {args.repeats}; median {result['jax_audio_s_per_s_median']:,.0f}); "
          f"CPU time / wall time {result['jax_cpu_per_wall_median']}")
    if librosa is not None:
        lib, ratio = result["librosa_audio_s_per_s"], result["ratio_jax_over_librosa"]
        print(f"librosa, one core: {lib['per_clip']:,.0f} s/s clip by clip, "
              f"{lib['batched_call']:,.0f} s/s in one batched call (best of {args.repeats})")
        print(f"ratio JAX / best librosa call, per round: median {ratio['median']}x "
              f"(worst {ratio['worst']}x, best {ratio['best']}x); "
              f"max |dB difference|: {result['max_abs_diff_db_vs_librosa']}")
    for name, g in gen.items():
        print(f"generation {name}: {g['clips_per_cpu_s']} clips per CPU second (best of "
              f"{args.repeats}; median {g['clips_per_cpu_s_median']}), 4 s at 16 kHz")
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
