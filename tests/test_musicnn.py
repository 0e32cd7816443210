"""The torch port of musicnn against the original implementation (musicnn 0.1.0 on TensorFlow), and its shipped weights.

The reference outputs in `tests/fixtures/musicnn_reference.npz` were computed once by the original, in a throwaway
TensorFlow environment, by `tools/musicnn_reference.py`, on synthetic clips that the same file generates: the clips are
regenerated here, never stored. Tolerances: the log-mel within 1e-3 (about two float16 steps of the mel, which the
original quantises; equal in practice), tag probabilities and penultimate activations within 1e-4 absolute, the mean and
max pools (values up to about 120) within 5e-4 relative to max(|value|, 1).
"""
import hashlib, json, runpy

import numpy as np
import pytest
import soundfile as sf

from mmvae.features import (MUSICNN_SR, MUSICNN_TAGS, MUSICNN_WEIGHTS, FeatureConfig, extract_musicnn, load_musicnn, musicnn_embed,
                            musicnn_logmel, musicnn_patches)
from conftest import TOP

REFERENCE = TOP/'tests'/'fixtures'/'musicnn_reference.npz'
CLIPS = runpy.run_path(str(TOP/'tools'/'musicnn_reference.py'))['synthetic_clips']()


@pytest.fixture(scope='module')
def ref():
    with np.load(REFERENCE, allow_pickle=False) as z: return {k: z[k] for k in z.files}


def test_fixture_is_small_and_safe(ref):
    assert REFERENCE.stat().st_size < 1_000_000
    assert tuple(ref['tags']) == MUSICNN_TAGS
    assert set(CLIPS) == {k.split('/')[0] for k in ref if '/' in k}


@pytest.mark.parametrize('name', sorted(CLIPS))
def test_logmel_matches_the_original(ref, name):
    ours, theirs = musicnn_logmel(CLIPS[name]), ref[f'{name}/logmel']
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)
    assert len(musicnn_patches(ours)) == len(ref[f'{name}/taggram'])  # as many 3-s patches as the original's taggram rows


@pytest.mark.parametrize('name', sorted(CLIPS))
def test_port_matches_the_original(ref, name):
    out = musicnn_embed(musicnn_patches(ref[f'{name}/logmel']), load_musicnn('cpu'))
    np.testing.assert_allclose(out['tags'], ref[f'{name}/taggram'], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out['penultimate'], ref[f'{name}/penultimate'], rtol=0, atol=1e-4)
    for k in ('mean_pool', 'max_pool'):
        r = ref[f'{name}/{k}']
        assert (np.abs(out[k] - r) / np.maximum(np.abs(r), 1)).max() < 5e-4, k


def test_wrong_weights_would_fail(ref):
    "The comparison is sharp: one batch-norm statistic off by 1 % breaks the 1e-4 tolerance."
    model = load_musicnn('cpu')
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.dense_bn.running_var.mul_(1.01)
        out = musicnn_embed(musicnn_patches(ref['melody/logmel']), model)
        assert np.abs(out['penultimate'] - ref['melody/penultimate']).max() > 1e-4
    finally: model.load_state_dict(state)


def test_extractor_end_to_end(ref, tmp_path):
    "The feature-store extractor on the clip as a file: the mean ‖ max of the original's penultimate layer and its mean tags."
    name = 'melody'
    sf.write(tmp_path/'melody.wav', CLIPS[name], MUSICNN_SR, subtype='FLOAT')
    out = extract_musicnn(tmp_path/'melody.wav', FeatureConfig(duration=30.0))
    pen = ref[f'{name}/penultimate']
    np.testing.assert_allclose(out['embedding'], np.concatenate([pen.mean(0), pen.max(0)]), rtol=0, atol=1e-4)
    np.testing.assert_allclose(out['tags'], ref[f'{name}/taggram'].mean(0), rtol=0, atol=1e-4)


def test_weights_match_their_provenance():
    prov = json.loads((MUSICNN_WEIGHTS.parent/'musicnn_msd.json').read_text())
    assert hashlib.sha256(MUSICNN_WEIGHTS.read_bytes()).hexdigest() == prov['npz_sha256']
    assert prov['licence'] == 'ISC' and prov['source'].startswith('musicnn 0.1.0')
    with np.load(MUSICNN_WEIGHTS, allow_pickle=False) as z:
        assert {k: list(z[k].shape) for k in z.files if k != 'tags'} == prov['variables']
    notice = (MUSICNN_WEIGHTS.parent/'LICENSE-musicnn.md').read_text()
    assert 'ISC licence' in notice and 'Permission to use, copy, modify' in notice


def test_a_clip_musicnn_cannot_read_is_skipped_once(monkeypatch, tmp_path):
    "musicnn failing on a clip the audio extractor read: the clip counts as missing, with zeros, listed once with the reason."
    import mmvae.features as F
    from mmvae.data import MediaError, load_manifest, make_demo_dataset
    m = load_manifest(make_demo_dataset(tmp_path/'data', n_songs=4, seconds=1.0, seed=3, p_midi=0.0, p_lyrics=0.0, n_jobs=1))
    bad = m['audio_path'].iloc[1]
    real = F.extract_musicnn
    def flaky(path, config):
        if str(path) == str(bad): raise MediaError(f'musicnn cannot read {path}')
        return real(path, config)
    monkeypatch.setattr(F, 'extract_musicnn', flaky)
    fs = F.build_features(m, cache_dir=tmp_path/'cache', config=F.FeatureConfig(duration=1.0), n_jobs=1, progress=False,
                          modalities=('audio',))
    assert fs.mask['audio'].tolist() == [True, False, True, True]
    assert fs.skipped[['modality', 'path']].values.tolist() == [['audio', str(bad)]] and 'musicnn cannot read' in fs.skipped['reason'].iloc[0]
    for name in ('audio', 'mel', 'musicnn', 'musicnn_tags'): assert not getattr(fs, name)[1].any() and getattr(fs, name)[0].any()
    assert fs.describe().loc['musicnn', 'present'] == 3
