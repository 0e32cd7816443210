#!/usr/bin/env python
"""Synthetic test clips for the musicnn port, and the original implementation's outputs on them (the test fixture).

The clips are generated deterministically in numpy (no dataset audio): `synthetic_clips()` is imported by
`tests/test_musicnn.py`, which regenerates them. Running this file computes what the *original* musicnn 0.1.0 (TensorFlow)
gives on them and writes `tests/fixtures/musicnn_reference.npz`. It needs a throwaway environment with TensorFlow, never
the project's (TensorFlow is not a dependency of mmvae), e.g.

    python3.11 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu==2.15.1 "numpy<2" librosa soundfile
    /tmp/tfenv/bin/pip install --no-deps musicnn==0.1.0
    /tmp/tfenv/bin/python tools/musicnn_reference.py

musicnn 0.1.0 already calls TensorFlow through `tf.compat.v1` (graph mode, `tf.compat.v1.layers`), so it runs unchanged
on TensorFlow 2.15 (with Keras 2); numpy < 2 keeps its preprocessing as it was written (see `mmvae.musicnn.musicnn_logmel`).

One setting is changed, not the code: `musicnn.configuration.BATCH_SIZE` (1, patches per session run) is raised so that
every patch of a clip goes through the first run. In `extractor()`'s loop over the later runs the penultimate (and the
`cnn1`..`cnn3`) activations are appended from a stale variable, so with batches of 1 every patch after the first repeats the
first patch's penultimate layer; the taggram and the pools are right either way. Batch norm runs in inference mode, so the
batch size changes no number.
"""
import sys
from pathlib import Path

import numpy as np

SR = 16000  # musicnn's sample rate
REFERENCE = Path(__file__).resolve().parent.parent/'tests'/'fixtures'/'musicnn_reference.npz'


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    "Linear attack and release of a note of `n` samples."
    e = np.ones(n)
    e[:attack] = np.linspace(0, 1, attack)
    e[n - release:] = np.linspace(1, 0, release)
    return e


def _note(freq: float, seconds: float, harmonics: int = 6, decay: float = 0.7) -> np.ndarray:
    "A harmonic tone (partials falling off by `decay` each) with a soft attack and release."
    t = np.arange(int(seconds * SR)) / SR
    y = sum(decay ** k * np.sin(2 * np.pi * freq * (k + 1) * t) for k in range(harmonics))
    return y * _envelope(len(t), int(0.01 * SR), int(0.05 * SR))


def synthetic_clips() -> dict[str, np.ndarray]:
    "Four deterministic mono float32 clips at 16 kHz: a melody, chords, noise bursts, clicks over a bass (6.5-9.5 s)."
    rng = np.random.default_rng(14)
    melody = np.concatenate([_note(440 * 2 ** (s / 12), 0.5) for s in [0, 2, 4, 5, 7, 9, 11, 12, 12, 11, 9, 7, 5, 4, 2, 0, 0, 7, 12]])
    chords = np.concatenate([sum(_note(f, 1.75, harmonics=4) for f in triad) for triad in
                             [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6), (196.0, 246.9, 293.7)]])
    n = int(6.5 * SR)
    bursts = np.zeros(n)
    for start in np.arange(0, n - SR // 4, int(0.4 * SR)):  # 150 BPM bursts of white noise, decaying
        bursts[start:start + SR // 4] += rng.standard_normal(SR // 4) * np.exp(-np.arange(SR // 4) / (0.03 * SR))
    n = int(9.5 * SR)
    clicks = 0.3 * np.sin(2 * np.pi * 55 * np.arange(n) / SR)  # a bass drone under a 120 BPM click track
    clicks[::SR // 2] += 4.0
    clips = dict(melody=melody, chords=chords, bursts=bursts, clicks=clicks)
    return {k: (0.5 * y / np.abs(y).max()).astype(np.float32) for k, y in clips.items()}


def main():
    import tempfile
    import soundfile as sf
    from musicnn import configuration, extractor as original  # the installed musicnn 0.1.0, unchanged
    configuration.BATCH_SIZE = 64  # all patches of a clip in the first run (see the module docstring)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, y in synthetic_clips().items():
            path = f'{d}/{name}.wav'
            sf.write(path, y, SR, subtype='FLOAT')  # read back bit-exact by librosa.load(sr=16000)
            _, logmel = original.batch_data(path, 187, 187)  # the original's log-mel (frames × 96)
            taggram, tags, feats = original.extractor(path, model='MSD_musicnn', input_length=3, input_overlap=False)
            out[f'{name}/logmel'] = logmel.astype(np.float32)
            out[f'{name}/taggram'] = taggram.astype(np.float32)
            for k in ('penultimate', 'mean_pool', 'max_pool'): out[f'{name}/{k}'] = feats[k].astype(np.float32)
            print(name, y.shape, logmel.shape, taggram.shape, {k: feats[k].shape for k in ('penultimate', 'mean_pool', 'max_pool')})
    import librosa, musicnn, tensorflow as tf
    out['tags'] = np.array(tags)
    out['versions'] = np.array([f'musicnn {getattr(musicnn, "__version__", "0.1.0")}', f'tensorflow {tf.__version__}',
                                f'librosa {librosa.__version__}', f'numpy {np.__version__}'])
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, **out)
    print(f'{REFERENCE}: {REFERENCE.stat().st_size / 1e3:.0f} kB')


if __name__ == '__main__':
    sys.exit(main())
