#!/usr/bin/env python
"""Benchmark of audio feature extraction (not a test: timings depend on the machine and its load).

On the same clips, in one run:
  (a) seed-style pipeline: `librosa.load`, then separate mfcc / melspectrogram / chroma_stft / spectral_contrast /
      spectral_centroid / rms / beat_track calls (each recomputes its own STFT), one process;
  (b) mmvae: the audio part of `build_features` (hand-made features and musicnn), all cores, cold cache in a temporary
      folder (and, for a same-core comparison, the same with one process);
  (c) the floor: decode (the same decoder and resampler as mmvae) plus one STFT per clip, one process;
  (h) mmvae's hand-made audio features alone (`extract_audio`), one process;
  (m) musicnn alone (`extract_musicnn`: decode at 16 kHz, log-mel, the CNN on every 3-s patch), one process, CPU;
The pipelines take turns on `--rounds` chunks of the clips (each chunk: c, a, h, m, b, b1), so that a change of load on a
shared machine hits them alike; (b) calls `build_features` once per chunk on the same cold store.
Then a warm rerun of (b) (everything from the store) and a peak-memory run of (b) over `--memory-n` manifest rows.

Peak memory is the largest resident set of the whole process tree (this process plus its worker processes, summed),
sampled every 20 ms with psutil while the run lasts; `getrusage` maxima (self, and children once the workers exit)
are printed alongside.

Usage, from the repository root:  .venv/bin/python bench/features.py [--data DIR] [--n N] [--jobs J] [--memory-n 903]
"""
import argparse, json, os, resource, shutil, sys, tempfile, threading, time, warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mmvae.data import load_manifest, make_demo_dataset
from mmvae.features import (FeatureConfig, build_features, cpu_cores, decode_audio, extract_audio, extract_musicnn, magnitude_stft,
                            process_pool)


def seed_pipeline(path, sr=22050, duration=30.0):
    "The per-feature librosa calls of a typical first script: every call computes its own spectrogram."
    import librosa
    y, sr = librosa.load(path, sr=sr, duration=duration, res_type='soxr_hq')
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20)
    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_mels=128))
    chroma = librosa.feature.chroma_stft(y=y, sr=sr)
    contrast = librosa.feature.spectral_contrast(y=y, sr=sr)
    centroid = librosa.feature.spectral_centroid(y=y, sr=sr)
    rms = librosa.feature.rms(y=y)
    tempo, _ = librosa.beat.beat_track(y=y, sr=sr)
    return np.concatenate([mfcc.mean(1), mfcc.std(1), mel.mean(1), chroma.mean(1), contrast.mean(1), centroid.mean(1),
                           rms.mean(1), np.atleast_1d(tempo)])


def floor(path, config):
    "Decode plus one STFT: the least any extractor of spectral features has to do."
    y, _ = decode_audio(path, config)
    return magnitude_stft(y, config.n_fft, config.hop_length)


class PeakRSS:
    "Context manager sampling the summed RSS of this process and all its descendants; `.peak` in bytes."
    def __init__(self, every=0.02): self.every, self.peak = every, 0

    def _sample(self):
        import psutil
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try: total += p.memory_info().rss
                except psutil.Error: pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self):
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True); self._t.start()
        return self

    def __exit__(self, *exc): self._stop.set(); self._t.join()


def timed(f, *args, **kwargs):
    t = time.perf_counter(); out = f(*args, **kwargs)
    return out, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default='../shared/mirex-dev/dataset', help='dataset folder; a generated demo when it does not exist')
    ap.add_argument('--n', type=int, default=None, help='clips to time (default: every clip with audio; demo: 40)')
    ap.add_argument('--jobs', type=int, default=None, help='worker processes for mmvae (default: all cores)')
    ap.add_argument('--memory-n', type=int, default=903, help='manifest rows of the peak-memory run (clips reused cyclically); 0 skips it')
    ap.add_argument('--rounds', type=int, default=5, help='the pipelines take turns on this many chunks of the clips')
    ap.add_argument('--no-serial', action='store_true', help='skip the one-process mmvae timing')
    ap.add_argument('--json', default=None, help='also write the measurements to this JSON file')
    args = ap.parse_args(argv)
    warnings.simplefilter('ignore')
    jobs = args.jobs or cpu_cores()
    tmp = Path(tempfile.mkdtemp(prefix='mmvae-bench-'))
    try:
        data = Path(args.data)
        if data.is_dir():
            manifest = load_manifest(data)
        else:
            print(f"{data} not found: timing a generated demo dataset (30-s clips)")
            manifest = load_manifest(make_demo_dataset(tmp/'demo', n_songs=args.n or 40, seconds=30.0, seed=0))
        clips = manifest[manifest['audio_path'].notna()].reset_index(drop=True)
        if args.n: clips = clips.iloc[np.linspace(0, len(clips) - 1, min(args.n, len(clips))).astype(int)].reset_index(drop=True)
        n, cfg, paths = len(clips), FeatureConfig(), clips['audio_path'].tolist()
        audio_only = dict(config=cfg, progress=False, modalities=('audio',))
        print(f"{n} clips from {data if data.is_dir() else 'the demo'}; {jobs} worker process(es) for mmvae; "
              f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}")

        # warm-up: librosa's numba code and lazy imports here, and the worker pool with its imports
        seed_pipeline(paths[0]); extract_audio(paths[0], cfg); extract_musicnn(paths[0], cfg); floor(paths[0], cfg)
        build_features(clips.head(2 * jobs), cache_dir=tmp/'warmup', n_jobs=jobs, **audio_only)

        # the machine may be shared: the pipelines take turns on chunks of clips, so that changes of load hit them alike
        chunks = np.array_split(np.arange(n), max(1, min(args.rounds, n)))
        t_floor = t_seed = t_hand = t_cnn = t_mm = t_mm1 = 0.0
        peak_b = 0
        for idx in chunks:
            part = clips.iloc[idx]
            t_floor += timed(lambda: [floor(paths[i], cfg) for i in idx])[1]
            t_seed += timed(lambda: [seed_pipeline(paths[i]) for i in idx])[1]
            t_hand += timed(lambda: [extract_audio(paths[i], cfg) for i in idx])[1]
            t_cnn += timed(lambda: [extract_musicnn(paths[i], cfg) for i in idx])[1]
            with PeakRSS() as mem_b:
                t_mm += timed(build_features, part, cache_dir=tmp/'cold', n_jobs=jobs, **audio_only)[1]
            peak_b = max(peak_b, mem_b.peak)
            if not args.no_serial:
                t_mm1 += timed(build_features, part, cache_dir=tmp/'cold1', n_jobs=1, **audio_only)[1]
        rows = [('(c) floor: decode + 1 STFT', 1, t_floor), ('(a) seed-style librosa pipeline', 1, t_seed),
                ('(h) mmvae hand-made audio features alone', 1, t_hand), ('(m) musicnn alone (CPU)', 1, t_cnn),
                ('(b) mmvae build_features (hand-made + musicnn), cold cache', jobs, t_mm)]
        if not args.no_serial: rows.append(('(b1) mmvae build_features, cold, 1 process', 1, t_mm1))
        warm, t_warm = timed(build_features, clips, cache_dir=tmp/'cold', n_jobs=jobs, **audio_only)
        assert warm.mask['audio'].all(), warm.skipped
        rows.append(('(w) mmvae warm rerun (store hit)', jobs, t_warm))

        table = pd.DataFrame(rows, columns=['pipeline', 'processes', 'seconds'])
        table['clips/s'] = n / table['seconds']
        table['ms/clip (wall)'] = 1000 * table['seconds'] / n
        print(table.to_string(index=False, float_format=lambda v: f'{v:,.2f}'))
        print(f"\nspeed-up of (h) over (a), 1 process:  {t_seed / t_hand:5.1f}x   (the same features as (a), the same single process)")
        print(f"(h) per clip / floor per clip:       {t_hand / t_floor:5.2f}x")
        print(f"musicnn (m): {n / t_cnn:.2f} clips/s on 1 process; (m) per clip / floor per clip: {t_cnn / t_floor:.1f}x; "
              f"musicnn / hand-made features: {t_cnn / t_hand:.1f}x; its share of (h) + (m): {t_cnn / (t_hand + t_cnn):.0%}")
        print(f"(b) on {jobs} process(es) over (h) + (m) on 1: {(t_hand + t_cnn) / t_mm:5.2f}x   (parallel speed-up of the audio extraction)")
        print(f"speed-up of (b) over (a):            {t_seed / t_mm:5.1f}x   ((b) computes musicnn as well)")
        if not args.no_serial:
            print(f"speed-up of (b1) over (a), 1 process: {t_seed / t_mm1:5.1f}x")
            print(f"(b1) per clip / floor per clip:       {t_mm1 / t_floor:5.2f}x   (same single process: the cost of all features over decode + STFT)")
        print(f"(b) wall per clip / floor per clip:   {t_mm / t_floor:5.2f}x   (goal <= 1.5x; (b) on {jobs} process(es), floor on 1)")
        print(f"warm rerun: {t_warm:.2f} s for {n} clips ({1000 * t_warm / n:.1f} ms/clip: hashing the files and loading the store)")
        print(f"peak RSS during (b), process tree: {peak_b / 2**20:,.0f} MiB")

        result = dict(clips=n, jobs=jobs, cpus=os.cpu_count(), load_average=os.getloadavg()[0],
                      seconds=dict(zip(table['pipeline'], table['seconds'])), speedup_b_over_a=t_seed / t_mm,
                      speedup_h_over_a=t_seed / t_hand, musicnn_clips_per_s=n / t_cnn, musicnn_over_floor=t_cnn / t_floor,
                      musicnn_over_hand=t_cnn / t_hand, b_over_serial_h_plus_m=(t_hand + t_cnn) / t_mm,
                      b_wall_over_floor=t_mm / t_floor, warm_rerun_s=t_warm, peak_rss_b_mib=peak_b / 2**20, rounds=len(chunks))
        if not args.no_serial: result.update(speedup_b1_over_a=t_seed / t_mm1, b1_over_floor=t_mm1 / t_floor)
        if args.memory_n:
            big = pd.concat([clips] * (-(-args.memory_n // n)), ignore_index=True).head(args.memory_n).copy()
            big['id'] = [f'{i:03d}' for i in range(1, len(big) + 1)]
            with PeakRSS() as mem:
                fsb, t_big = timed(build_features, big, cache_dir=tmp/'memory', n_jobs=jobs, **audio_only)
            nbytes = sum(getattr(fsb, k).nbytes for k in ('audio', 'mel', 'musicnn', 'musicnn_tags', 'lyrics_lsa', 'lyrics_emb', 'midi'))
            print(f"\npeak-memory run: {len(big)} rows ({n} distinct clips reused; each row extracted anew), "
                  f"{t_big:.1f} s, {len(big) / t_big:.2f} clips/s")
            print(f"  peak RSS, process tree (sampled): {mem.peak / 2**20:,.0f} MiB   (goal < 2 GB); FeatureSet arrays {nbytes / 2**20:.1f} MiB")
            result.update(memory_rows=len(big), memory_run_s=t_big, peak_rss_memory_run_mib=mem.peak / 2**20)
        process_pool(jobs).shutdown(wait=True)  # the extraction workers exit: their maxima reach RUSAGE_CHILDREN
        kb = lambda who: resource.getrusage(who).ru_maxrss / 1024
        print(f"  getrusage max RSS: this process {kb(resource.RUSAGE_SELF):,.0f} MiB, largest child {kb(resource.RUSAGE_CHILDREN):,.0f} MiB")
        result.update(maxrss_self_mib=kb(resource.RUSAGE_SELF), maxrss_largest_child_mib=kb(resource.RUSAGE_CHILDREN))
        if args.json: Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
