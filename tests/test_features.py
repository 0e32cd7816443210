"""The feature store on generated demo data, on bad input, on a Dask cluster and on the real subset (where present)."""
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import mmvae.features as F
from mmvae.data import load_manifest, make_demo_dataset, read_lyrics
from mmvae.features import FeatureConfig, build_features, clean_lyrics

REAL = Path(__file__).resolve().parents[2]/'shared'/'mirex-dev'/'dataset'
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason='real MIREX subset not present (../shared/mirex-dev)')
CFG = FeatureConfig(duration=2.0, lsa_dim=8)
MATRICES = ('audio', 'mel', 'lyrics_lsa', 'lyrics_emb', 'midi')


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp('demo')/'dataset', n_songs=10, seconds=2, seed=1, p_midi=0.5)


@pytest.fixture(scope='module')
def manifest(demo):
    return load_manifest(demo)


@pytest.fixture(scope='module')
def built(manifest, tmp_path_factory):
    "Features of the demo, extracted serially into a module-wide store."
    cache = tmp_path_factory.mktemp('cache')
    return cache, build_features(manifest, cache_dir=cache, config=CFG, n_jobs=1, progress=False)


def _boom(*args, **kwargs): raise AssertionError('extractor called although the store has the entry')


def _same(a, b, exact=True):
    for name in MATRICES:
        (np.testing.assert_array_equal if exact else lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4))(
            getattr(a, name), getattr(b, name))
    for m in a.mask: np.testing.assert_array_equal(a.mask[m], b.mask[m])


def test_shapes_and_masks(manifest, built):
    _, fs = built
    n = len(manifest)
    assert list(fs.ids) == manifest['id'].tolist()
    assert fs.audio.shape == (n, len(fs.audio_names)) and fs.audio.dtype == np.float32
    assert fs.mel.shape == (n, CFG.patch_mels, CFG.patch_frames)
    assert fs.lyrics_lsa.shape == (n, 8) and fs.lyrics_emb.shape == (n, 384)
    assert fs.midi.shape == (n, len(fs.midi_names))
    for m in ('audio', 'lyrics', 'midi'):  # every demo file is readable
        np.testing.assert_array_equal(fs.mask[m], manifest[f'{m}_path'].notna().to_numpy())
    assert 0 < fs.mask['midi'].sum() < n and 0 < fs.mask['lyrics'].sum()
    for name, m in (('audio', 'audio'), ('mel', 'audio'), ('lyrics_emb', 'lyrics'), ('lyrics_lsa', 'lyrics'), ('midi', 'midi')):
        x = getattr(fs, name)
        assert np.isfinite(x).all() and not x[~fs.mask[m]].any() and x[fs.mask[m]].any()
    np.testing.assert_allclose(np.linalg.norm(fs.lyrics_emb[fs.mask['lyrics']], axis=1), 1, atol=1e-5)
    assert len(fs.skipped) == 0 and list(fs.skipped.columns) == ['id', 'modality', 'path', 'reason']
    assert fs.describe().loc['audio', 'present'] == n


def test_rerun_hits_the_cache(manifest, built, monkeypatch):
    cache, first = built
    for name in ('extract_audio', 'extract_midi', 'lyrics_embeddings', 'lyrics_lsa', '_run_task'):
        monkeypatch.setattr(F, name, _boom)
    again = build_features(manifest, cache_dir=cache, config=CFG, progress=False)  # default n_jobs: no pool needed
    _same(first, again)
    assert not list(Path(cache).rglob('*.tmp'))


def test_changed_parameter_recomputes_only_what_it_affects(manifest, built, monkeypatch):
    cache, first = built
    calls = []
    real = F.extract_audio
    monkeypatch.setattr(F, 'extract_audio', lambda p, c: calls.append(p) or real(p, c))
    for name in ('extract_midi', 'lyrics_embeddings', 'lyrics_lsa'): monkeypatch.setattr(F, name, _boom)
    fs = build_features(manifest, cache_dir=cache, config=replace(CFG, hop_length=256), n_jobs=1, progress=False)
    assert len(calls) == len(manifest)  # every clip re-extracted, nothing else
    assert not np.array_equal(fs.audio, first.audio)
    np.testing.assert_array_equal(fs.midi, first.midi)
    monkeypatch.undo()  # LSA size: only the corpus-wide LSA is recomputed
    for name in ('extract_audio', 'extract_midi', 'lyrics_embeddings'): monkeypatch.setattr(F, name, _boom)
    fs = build_features(manifest, cache_dir=cache, config=replace(CFG, lsa_dim=4), n_jobs=1, progress=False)
    assert fs.lyrics_lsa.shape[1] == 4
    np.testing.assert_array_equal(fs.lyrics_emb, first.lyrics_emb)


def test_interrupted_run_resumes(manifest, tmp_path, monkeypatch):
    real, calls = F.extract_audio, []
    def flaky(p, c):
        if len(calls) == 4: raise KeyboardInterrupt
        calls.append(p); return real(p, c)
    monkeypatch.setattr(F, 'extract_audio', flaky)
    with pytest.raises(KeyboardInterrupt):
        build_features(manifest, cache_dir=tmp_path, config=CFG, n_jobs=1, progress=False, modalities=('audio',))
    assert len(list((tmp_path/'features'/'audio').glob('*.npz'))) == 4 and not list(tmp_path.rglob('*.tmp'))
    calls.clear(); monkeypatch.setattr(F, 'extract_audio', lambda p, c: calls.append(p) or real(p, c))
    fs = build_features(manifest, cache_dir=tmp_path, config=CFG, n_jobs=1, progress=False, modalities=('audio',))
    assert len(calls) == len(manifest) - 4 and fs.mask['audio'].all()


def test_corrupt_files_are_skipped(demo, tmp_path):
    bad = Path(shutil.copytree(demo, tmp_path/'dataset'))
    m = load_manifest(bad)
    (bad/'Audio'/'003.mp3').write_bytes(b'\xff\xfb' + bytes(range(256)) * 8)  # garbage behind an MP3 frame sync
    mid = Path(m['midi_path'].dropna().iloc[0])
    mid.write_bytes(mid.read_bytes()[:40])  # truncated
    with pytest.warns(UserWarning, match='2 file'):
        fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False)
    assert len(fs.skipped) == 2
    assert set(zip(fs.skipped['id'], fs.skipped['modality'])) == {('003', 'audio'), (mid.stem, 'midi')}
    assert all(Path(p).name in r for p, r in zip(fs.skipped['path'], fs.skipped['reason']))
    assert fs.mask['audio'].sum() == len(m) - 1 and not fs.audio[m['id'] == '003'].any()
    assert fs.mask['midi'].sum() == m['midi_path'].notna().sum() - 1
    # the failure is remembered: a rerun reports it again without retrying
    with pytest.warns(UserWarning, match='2 file'):
        again = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False)
    assert len(again.skipped) == 2


def test_process_pool_matches_serial(manifest, built, tmp_path):
    _, serial = built
    pooled = build_features(manifest, cache_dir=tmp_path, config=CFG, n_jobs=2, progress=False, modalities=('audio', 'midi'))
    np.testing.assert_allclose(pooled.audio, serial.audio, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(pooled.midi, serial.midi, rtol=1e-6)


def test_dask_local_cluster(manifest, built, tmp_path):
    distributed = pytest.importorskip('distributed')
    _, serial = built
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
         distributed.Client(cluster) as client:
        fs = build_features(manifest, cache_dir=tmp_path/'a', config=CFG, client=client, progress=False, modalities=('audio', 'midi'))
        by_address = build_features(manifest.head(3), cache_dir=tmp_path/'b', config=CFG, client=cluster.scheduler_address,
                                    progress=False, modalities=('audio',))
    np.testing.assert_allclose(fs.audio, serial.audio, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fs.midi, serial.midi, rtol=1e-6)
    np.testing.assert_allclose(by_address.audio, serial.audio[:3], rtol=1e-5, atol=1e-4)


def test_lyrics_windows_fit_the_model():
    tok = F.text_model().tokenizer
    text = clean_lyrics('[Verse 1]\n' + '\n'.join(f'line {i} ' + 'word ' * (i % 50) for i in range(120)) + '\n' + 'long ' * 600)
    windows = F.lyrics_windows(text, tok, 256)
    assert all(len(tok(w)['input_ids']) <= 256 for w in windows) and len(windows) >= 5
    assert '[Verse 1]' not in text and 'line 0' in windows[0]


KEPT_LINES = ['Bridge over troubled water', 'Solo, I walk alone tonight', 'Repeat after me', 'Hook me up baby', 'I got 2 x 4s']


@pytest.mark.parametrize('line', KEPT_LINES)
def test_clean_lyrics_keeps_lyric_lines(line):
    assert clean_lyrics(f'[Chorus]\n{line}\nBridge') == line


@pytest.mark.parametrize('marker', ['[Chorus]', '(Verse 2)', 'Chorus:', 'Verse 2', 'Bridge', '(Repeat chorus)', 'Pre-Chorus', '[Hook: Sheek]'])
def test_clean_lyrics_drops_section_markers(marker):
    assert clean_lyrics(f'la la\n{marker}\nna na') == 'la la\nna na'


@pytest.mark.parametrize('line, cleaned', [('Oh yeah (x2)', 'Oh yeah'), ('Oh yeah x2', 'Oh yeah'), ('Oh yeah 2x', 'Oh yeah'),
                                           ('no, no(repeat 8x)', 'no, no'), ('I got 2 x 4s', 'I got 2 x 4s'),
                                           ('x2 times the fun', 'x2 times the fun'), ('(x2) Oh yeah', '(x2) Oh yeah')])
def test_clean_lyrics_strips_repeat_marks_only_at_line_end(line, cleaned):
    assert clean_lyrics(line) == cleaned


def test_lyrics_cache_version_bumped():
    "Cached lyrics entries from before the cleaning fix are not reused."
    assert F.EXTRACTOR_VERSION['lyrics_emb'] >= 2 and F.EXTRACTOR_VERSION['lyrics_lsa'] >= 2


def test_text_model_device():
    torch = pytest.importorskip('torch')
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert F.text_model().device.type == expected


def _blas_threads():
    threadpoolctl = pytest.importorskip('threadpoolctl')
    return [i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']


def test_one_blas_thread_is_thread_safe():
    before = _blas_threads()
    if not before or max(before) < 2: pytest.skip('BLAS runs on one thread here anyway')
    import threading
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}
    def a():
        with F._one_blas_thread(): a_in.set(); b_in.wait(5); seen['a'] = _blas_threads()
        a_out.set()
    def b():
        a_in.wait(5)
        with F._one_blas_thread(): b_in.set(); a_out.wait(5); seen['b'] = _blas_threads()  # a has left, b is still inside
    ts = [threading.Thread(target=f) for f in (a, b)]
    for t in ts: t.start()
    for t in ts: t.join(10)
    assert max(seen['a']) == 1 and max(seen['b']) == 1
    assert _blas_threads() == before  # the limit is lifted once the last user leaves


def test_dask_tasks_run_with_one_blas_thread(monkeypatch):
    distributed = pytest.importorskip('distributed')
    before = _blas_threads()
    if not before or max(before) < 2: pytest.skip('BLAS runs on one thread here anyway')
    monkeypatch.setattr(F, '_run_task', lambda t, c: (t, 'ok', {'x': np.array(_blas_threads())}))
    tasks = [('midi', i, f'f{i}.mid', f'k{i}') for i in range(4)]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
         distributed.Client(cluster) as client:
        res = list(F._execute(tasks, CFG, client=client, progress=False))
    assert len(res) == 4 and all(r[1] == 'ok' and r[2]['x'].max() == 1 for r in res)
    assert _blas_threads() == before


def _with_one_lyrics_file(demo, tmp_path, raw: bytes):
    bad = Path(shutil.copytree(demo, tmp_path/'dataset'))
    m = load_manifest(bad)
    p = Path(m['lyrics_path'].dropna().iloc[0])
    p.write_bytes(raw)
    return m, p


def test_odd_length_utf16_lyrics_are_not_fatal(demo, tmp_path):
    m, p = _with_one_lyrics_file(demo, tmp_path, b'\xff\xfe' + b'abc')  # BOM + 3 bytes: odd-length UTF-16
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('lyrics',))
    row = int(np.flatnonzero(m['lyrics_path'].to_numpy() == str(p))[0])
    skipped = fs.skipped[fs.skipped['id'] == m['id'].iloc[row]]
    assert fs.mask['lyrics'][row] != (len(skipped) == 1)  # either read (decoded with replacement) or skipped and counted
    assert all(p.name in r for r in skipped['reason'])
    assert fs.mask['lyrics'].sum() + len(fs.skipped) == m['lyrics_path'].notna().sum()


def test_undecodable_lyrics_are_skipped_and_counted(demo, tmp_path, monkeypatch):
    m, p = _with_one_lyrics_file(demo, tmp_path, b'\xff\xfe' + b'abc')
    real = F.read_lyrics
    def strict(path):
        if Path(path) == p: raise UnicodeDecodeError('utf-16-le', b'c', 0, 1, 'truncated data')
        return real(path)
    monkeypatch.setattr(F, 'read_lyrics', strict)
    with pytest.warns(UserWarning, match='1 file'):
        fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('lyrics',))
    assert len(fs.skipped) == 1 and fs.skipped['modality'].iloc[0] == 'lyrics' and p.name in fs.skipped['reason'].iloc[0]
    assert fs.mask['lyrics'].sum() == m['lyrics_path'].notna().sum() - 1


@needs_real
@pytest.mark.filterwarnings('ignore::UserWarning')
def test_real_subset_audio_and_midi(tmp_path):
    "Every clip and MIDI file of the real subset extracts (about a minute on 2 cores)."
    m = load_manifest(REAL)
    fs = build_features(m, cache_dir=tmp_path, progress=False, modalities=('audio', 'midi'))
    assert len(fs.skipped) == 0, fs.skipped.to_string()
    for mod in ('audio', 'midi'):
        np.testing.assert_array_equal(fs.mask[mod], m[f'{mod}_path'].notna().to_numpy())
    assert fs.mask['audio'].sum() == 150
    assert np.isfinite(fs.audio).all() and np.isfinite(fs.mel).all() and np.isfinite(fs.midi).all()
    tempo = fs.audio[fs.mask['audio'], fs.audio_names.index('tempo')]
    assert ((tempo >= 30) & (tempo <= 320)).all()


@needs_real
@pytest.mark.filterwarnings('ignore::UserWarning')
def test_real_subset_lyrics(tmp_path):
    "All real lyrics clean to text; a slice of them is embedded (the full set takes minutes on a loaded machine)."
    m = load_manifest(REAL)
    has = m[m['lyrics_path'].notna()]
    assert all(clean_lyrics(read_lyrics(p)) for p in has['lyrics_path'])
    part = has.iloc[::6]
    fs = build_features(part, cache_dir=tmp_path, progress=False, modalities=('lyrics',))
    assert fs.mask['lyrics'].all() and len(fs.skipped) == 0
    np.testing.assert_allclose(np.linalg.norm(fs.lyrics_emb, axis=1), 1, atol=1e-5)
