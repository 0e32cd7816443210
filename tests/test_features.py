"""The feature store on generated demo data, on bad input, on a Dask cluster and on the real subset (where present)."""
import json
import os
import shutil
import threading
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import mido
import numpy as np
import pandas as pd
import pretty_midi
import pytest
import soundfile as sf

import mmvae.features as F
from conftest import REAL, needs_real
from mmvae.data import load_manifest, make_demo_dataset, manifest_skipped, read_lyrics
from mmvae.features import FeatureConfig, build_features, clean_lyrics
CFG = FeatureConfig(duration=2.0, lsa_dim=8)
MATRICES = ('audio', 'mel', 'audio_affect', 'lyrics_lsa', 'lyrics_emb', 'lyrics_affect', 'midi')


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
    for name, m in (('audio', 'audio'), ('mel', 'audio'), ('audio_affect', 'audio'), ('lyrics_emb', 'lyrics'), ('lyrics_lsa', 'lyrics'),
                    ('lyrics_affect', 'lyrics'), ('midi', 'midi')):
        x = getattr(fs, name)
        assert np.isfinite(x).all() and not x[~fs.mask[m]].any() and x[fs.mask[m]].any()
    np.testing.assert_allclose(np.linalg.norm(fs.lyrics_emb[fs.mask['lyrics']], axis=1), 1, atol=1e-5)
    assert len(fs.skipped) == 0 and list(fs.skipped.columns) == ['id', 'modality', 'path', 'reason']
    assert fs.describe().loc['audio', 'present'] == n


def test_rerun_hits_the_cache(manifest, built, monkeypatch):
    cache, first = built
    for name in ('extract_audio', 'extract_midi', 'lyrics_embeddings', 'lyrics_lsa', 'lyrics_sentiment', '_run_task'):
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
    for name in ('extract_audio', 'extract_midi', 'lyrics_embeddings', 'lyrics_sentiment'): monkeypatch.setattr(F, name, _boom)
    fs = build_features(manifest, cache_dir=cache, config=replace(CFG, lsa_dim=4), n_jobs=1, progress=False)
    assert fs.lyrics_lsa.shape[1] == 4
    np.testing.assert_array_equal(fs.lyrics_emb, first.lyrics_emb)
    np.testing.assert_array_equal(fs.lyrics_affect, first.lyrics_affect)


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
    with pytest.warns(UserWarning, match='2 input'):
        fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False)
    assert len(fs.skipped) == 2
    assert set(zip(fs.skipped['id'], fs.skipped['modality'])) == {('003', 'audio'), (mid.stem, 'midi')}
    assert all(Path(p).name in r for p, r in zip(fs.skipped['path'], fs.skipped['reason']))
    assert fs.mask['audio'].sum() == len(m) - 1 and not fs.audio[m['id'] == '003'].any()
    assert fs.mask['midi'].sum() == m['midi_path'].notna().sum() - 1
    # the failure is remembered: a rerun reports it again without retrying
    with pytest.warns(UserWarning, match='2 input'):
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


def test_lyrics_windows_fit_the_model_and_are_capped():
    tok = F.text_model().tokenizer
    text = clean_lyrics('[Verse 1]\n' + '\n'.join(f'line {i} ' + 'word ' * (i % 50) for i in range(120)) + '\n' + 'long ' * 600)
    windows = F.lyrics_windows(text, tok, 256)
    assert all(len(tok(w)['input_ids']) <= 256 for w in windows) and len(windows) >= 5
    assert '[Verse 1]' not in text and 'line 0' in windows[0]
    assert F.lyrics_windows(text, tok, 256, max_windows=3) == windows[:3]
    huge = 'la la love the night away\n' * 200_000  # 5.2 MB
    start = time.monotonic()
    assert len(F.lyrics_windows(huge, tok, 256, max_windows=32)) == 32 and time.monotonic() - start < 60


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


def test_bumping_an_extractor_version_invalidates_only_its_entries(monkeypatch):
    keys = {e: F.entry_key(e, 'abc', CFG) for e in F.EXTRACTOR_VERSION}
    monkeypatch.setitem(F.EXTRACTOR_VERSION, 'lyrics_emb', F.EXTRACTOR_VERSION['lyrics_emb'] + 1)
    assert {e: F.entry_key(e, 'abc', CFG) != k for e, k in keys.items()} == {e: e == 'lyrics_emb' for e in F.EXTRACTOR_VERSION}


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


def test_odd_length_utf16_lyrics_are_read(demo, tmp_path):
    m, p = _with_one_lyrics_file(demo, tmp_path, b'\xff\xfe' + b'abc')  # BOM + 3 bytes: one UTF-16 character and a stray byte
    fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('lyrics',))
    row = int(np.flatnonzero(m['lyrics_path'].to_numpy() == str(p))[0])
    assert fs.mask['lyrics'][row] and fs.skipped.empty and fs.mask['lyrics'].sum() == m['lyrics_path'].notna().sum()
    np.testing.assert_allclose(np.linalg.norm(fs.lyrics_emb[row]), 1, atol=1e-5)


def test_undecodable_lyrics_are_skipped_and_counted(demo, tmp_path, monkeypatch):
    m, p = _with_one_lyrics_file(demo, tmp_path, b'\xff\xfe' + b'abc')
    real = F.read_lyrics
    def strict(path):
        if Path(path) == p: raise UnicodeDecodeError('utf-16-le', b'c', 0, 1, 'truncated data')
        return real(path)
    monkeypatch.setattr(F, 'read_lyrics', strict)
    with pytest.warns(UserWarning, match='1 input'):
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
    a = dict(zip(fs.audio_affect_names, fs.audio_affect[fs.mask['audio']].T))
    assert np.isfinite(fs.audio_affect).all()
    np.testing.assert_allclose(sum(a[f'tonal_{i}'] for i in F.INTERVALS), 1, atol=1e-4)
    assert (np.abs(a['mode_strength']) <= 2).all() and (a['mode_strength'] > 0).any() and (a['mode_strength'] < 0).any()
    assert ((a['pulse_clarity'] >= 0) & (a['pulse_clarity'] <= 1)).all() and (a['loudness_range'] >= 0).all()
    assert ((a['onset_density'] > 0) & (a['onset_density'] < 15)).all()


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
    compound = fs.lyrics_affect[:, fs.lyrics_affect_names.index('vader_compound')]
    assert (np.abs(compound) <= 1).all() and (compound > 0).any() and (compound < 0).any()


# --- every bad input listed once: the manifest's skipped items come first (issues 12, 17) ---

def test_manifest_skipped_inputs_are_listed_once(demo, tmp_path):
    bad = Path(shutil.copytree(demo, tmp_path/'dataset'))
    (bad/'Audio'/'002.mp3').write_bytes(b'')  # zero bytes: load_manifest leaves it out
    lyr = sorted((bad/'Lyrics').iterdir())[0]
    lyr.write_bytes(b'')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m = load_manifest(bad)
    assert m.loc[m['id'] == '002', 'audio_path'].isna().all()
    (bad/'Audio'/'003.mp3').write_bytes(b'\xff\xfb' + bytes(range(256)) * 8)  # found by extraction
    with pytest.warns(UserWarning, match=r'3 input\(s\) skipped \(2 by load_manifest, 1 by extraction\)'):
        fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False)
    assert sorted(zip(fs.skipped['id'], fs.skipped['modality'])) == sorted([('002', 'audio'), ('003', 'audio'), (lyr.stem, 'lyrics')])
    reason = dict(zip(fs.skipped['id'] + '/' + fs.skipped['modality'], fs.skipped['reason']))
    assert '002.mp3' in reason['002/audio'] and 'empty' in reason['002/audio']
    assert lyr.name in reason[f'{lyr.stem}/lyrics'] and '003.mp3' in reason['003/audio']
    d = fs.describe()
    assert (d.loc['audio', 'skipped'], d.loc['mel', 'skipped'], d.loc['lyrics_emb', 'skipped'], d.loc['midi', 'skipped']) == (2, 2, 1, 0)
    assert fs.mask['audio'].sum() == len(m) - 2
    audio_only = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('audio',))
    assert set(audio_only.skipped['modality']) == {'audio'} and len(audio_only.skipped) == 2  # modalities not built: not listed


def test_a_file_the_manifest_listed_is_not_listed_again(demo, tmp_path):
    bad = Path(shutil.copytree(demo, tmp_path/'dataset'))
    m = load_manifest(bad)
    p = m.loc[m['id'] == '003', 'audio_path'].iloc[0]
    Path(p).write_bytes(b'\xff\xfb' + bytes(range(256)) * 8)
    info = str(bad/'dataset info.csv')
    rows = [dict(id='003', modality='audio', path=p, reason=f'{p}: listed by the data layer'),
            dict(id='', modality='metadata', path=info, reason=f'{info}, line 5: no Filename field')]
    m.attrs['skipped'] = tuple(tuple(r.values()) for r in rows)  # the data layer's form: (id, modality, path, reason) records
    assert len(manifest_skipped(m)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False)
    assert fs.skipped['reason'].tolist() == [f'{p}: listed by the data layer', f'{info}, line 5: no Filename field']
    assert fs.describe().loc['audio', 'skipped'] == 1 and not fs.mask['audio'][m['id'] == '003'].any()


# --- decode failures are remembered only under the decoders that produced them ---

def test_remembered_decode_error_is_retried_under_other_decoders(demo, tmp_path, monkeypatch):
    bad = Path(shutil.copytree(demo, tmp_path/'dataset'))
    m = load_manifest(bad)
    (bad/'Audio'/'003.mp3').write_bytes(b'\xff\xfb' + bytes(range(256)) * 8)
    run = lambda: build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('audio',))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        run()
        notes = list((tmp_path/'cache'/'features'/'audio').glob('*.error.json'))
        assert len(notes) == 1 and json.loads(notes[0].read_text())['environment'] == F.decoder_environment('audio')
        calls, real = [], F.extract_audio
        monkeypatch.setattr(F, 'extract_audio', lambda p, c: calls.append(Path(p).name) or real(p, c))
        fs = run()  # same decoders: the remembered reason, no retry
        assert calls == [] and fs.skipped['id'].tolist() == ['003']
        monkeypatch.setattr(F, 'decoder_environment', lambda extractor: 'decoders-after-installing-ffmpeg')
        fs = run()  # other decoders: tried again (still undecodable here), remembered under the new ones
        assert calls == ['003.mp3'] and fs.skipped['id'].tolist() == ['003']
        assert json.loads(notes[0].read_text())['environment'] == 'decoders-after-installing-ffmpeg'
        notes[0].write_text(json.dumps({'reason': 'noted by an older mmvae'}))  # no environment at all: tried again
        fs = run()
        assert calls == ['003.mp3', '003.mp3'] and 'noted by an older' not in fs.skipped['reason'].iloc[0]


# --- MIDI: absurd tempos, no notes, drums only ---

def _melody_file(path, tempi: dict, program=0) -> Path:
    "Eight quarter notes, C major scale; `tempi` maps a beat to a tempo event (microseconds per beat)."
    mid = mido.MidiFile(ticks_per_beat=480); tr = mido.MidiTrack(); mid.tracks.append(tr)
    tr.append(mido.Message('program_change', program=program, time=0))
    for beat, p in enumerate((60, 62, 64, 65, 67, 69, 71, 72)):
        if beat in tempi: tr.append(mido.MetaMessage('set_tempo', tempo=tempi[beat], time=0))
        tr.append(mido.Message('note_on', note=p, velocity=90, time=0))
        tr.append(mido.Message('note_off', note=p, velocity=0, time=480))
    mid.save(str(path))
    return path


def test_absurd_midi_tempo_events_are_ignored(tmp_path):
    v = lambda x: dict(zip(F.MIDI_FEATURE_NAMES, x))
    clean = F.extract_midi(_melody_file(tmp_path/'clean.mid', {0: 600_000}))  # 100 BPM
    assert v(clean)['tempo_file'] == pytest.approx(100, abs=1e-3) and v(clean)['length'] == pytest.approx(4.8, abs=1e-4)
    for name, tempi in (('fast', {0: 600_000, 3: 1}), ('slow', {0: 600_000, 5: 0xFFFFFF}), ('both', {0: 600_000, 2: 1, 6: 0xFFFFFF})):
        damaged = F.extract_midi(_melody_file(tmp_path/f'{name}.mid', tempi))  # 6e7 BPM, 3.6 BPM: as if absent
        np.testing.assert_allclose(damaged, clean, rtol=1e-5, atol=1e-5, err_msg=name)
    none_left = v(F.extract_midi(_melody_file(tmp_path/'none.mid', {0: 1})))  # no plausible tempo: the MIDI default
    assert none_left['tempo_file'] == pytest.approx(120, abs=1e-3) and none_left['length'] == pytest.approx(4.0, abs=1e-4)
    assert none_left['note_density'] == pytest.approx(2.0, abs=1e-4)
    assert none_left['tempo_estimate'] == pytest.approx(120, abs=1e-3)  # estimated on the retimed notes, not on the damaged ones


def test_degenerate_midis_have_defined_outcomes(demo, tmp_path):
    bad = Path(shutil.copytree(demo, tmp_path/'dataset'))
    m = load_manifest(bad)
    mids = m.loc[m['midi_path'].notna(), ['id', 'midi_path']].to_numpy()
    assert len(mids) >= 2
    (no_notes_id, no_notes), (drums_id, drums) = mids[0], mids[1]
    pm = pretty_midi.PrettyMIDI(); pm.instruments.append(pretty_midi.Instrument(program=0)); pm.write(no_notes)
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    kit = pretty_midi.Instrument(program=0, is_drum=True)
    kit.notes += [pretty_midi.Note(100, 36, t / 2, t / 2 + .1) for t in range(16)]
    pm.instruments.append(kit); pm.write(drums)
    with pytest.warns(UserWarning, match='1 input'):
        fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('midi',))
    assert fs.skipped[['id', 'modality']].values.tolist() == [[no_notes_id, 'midi']]
    assert 'no notes' in fs.skipped['reason'].iloc[0] and Path(no_notes).name in fs.skipped['reason'].iloc[0]
    row = int(np.flatnonzero(fs.ids == drums_id)[0])
    assert fs.mask['midi'][row]  # drums only: kept
    v = dict(zip(fs.midi_names, fs.midi[row]))
    assert all(v[k] == 0 for k in ('pc_C', 'pitch_mean', 'pitch_std', 'note_density', 'polyphony', 'family_piano', 'major'))
    assert v['drum_density'] == pytest.approx(16 / 7.6, abs=0.01) and v['n_instruments'] == 1 and np.isfinite(fs.midi).all()


# --- huge lyrics: the embedding path is bounded ---

def test_huge_lyrics_file_is_kept_quickly_with_a_warning(demo, tmp_path):
    m, p = _with_one_lyrics_file(demo, tmp_path, ('la la love the night away\n' * 200_000).encode())
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('lyrics',))
    assert time.monotonic() - start < 300  # does not take minutes
    row = int(np.flatnonzero(m['lyrics_path'].to_numpy() == str(p))[0])
    assert fs.mask['lyrics'][row] and len(fs.skipped) == 0
    assert any(p.name in str(w.message) for w in caught)  # said, naming the file
    np.testing.assert_allclose(np.linalg.norm(fs.lyrics_emb[row]), 1, atol=1e-5)


# --- no wait without a bound: worker processes and Dask ---

_REAL_TASK = F._run_task_one_thread  # what workers run, before any test replaces it


def _dies_on_003(task, config):
    "A task that kills its worker process on one file, like a segfaulting decoder."
    if task[2].endswith('003.mp3'): os._exit(7)
    return _REAL_TASK(task, config)


def _hangs_on_003(task, config):
    "A task that never returns on one file, like a decoder in an endless loop."
    if task[2].endswith('003.mp3'): time.sleep(3600)
    return _REAL_TASK(task, config)


def test_a_dying_worker_process_costs_only_its_file(manifest, built, tmp_path, monkeypatch):
    _, serial = built
    monkeypatch.setattr(F, '_run_task_one_thread', _dies_on_003)
    with pytest.warns(UserWarning, match='1 input'):
        fs = build_features(manifest, cache_dir=tmp_path, config=CFG, n_jobs=2, progress=False, modalities=('audio', 'midi'))
    assert fs.skipped[['id', 'modality']].values.tolist() == [['003', 'audio']]
    reason = fs.skipped['reason'].iloc[0]
    assert '003.mp3' in reason and 'died' in reason and 'EXIT(7)' in reason
    ok = (manifest['id'] != '003').to_numpy()
    np.testing.assert_array_equal(fs.mask['audio'], ok)
    np.testing.assert_allclose(fs.audio[ok], serial.audio[ok], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fs.midi, serial.midi, rtol=1e-6)
    assert not list((tmp_path/'features'/'audio').glob('*.error.json'))  # not remembered: tried again next time
    monkeypatch.undo()
    again = build_features(manifest, cache_dir=tmp_path, config=CFG, n_jobs=2, progress=False, modalities=('audio',))
    assert again.mask['audio'].all()


def test_a_stuck_worker_process_costs_only_its_file(manifest, built, tmp_path, monkeypatch):
    _, serial = built
    monkeypatch.setattr(F, '_run_task_one_thread', _hangs_on_003)
    start = time.monotonic()
    with pytest.warns(UserWarning, match='1 input'):
        fs = build_features(manifest, cache_dir=tmp_path, config=CFG, n_jobs=2, progress=False, modalities=('audio',), timeout=20)
    assert time.monotonic() - start < 180  # (a fresh worker process takes 4-5 s to start here under load: 20 s leaves it room)
    assert fs.skipped['id'].tolist() == ['003'] and 'did not finish within 20 s' in fs.skipped['reason'].iloc[0]
    ok = (manifest['id'] != '003').to_numpy()
    np.testing.assert_allclose(fs.audio[ok], serial.audio[ok], rtol=1e-5, atol=1e-4)


def test_unreachable_scheduler_is_a_clear_error(manifest, tmp_path):
    dask = pytest.importorskip('dask'); pytest.importorskip('distributed')
    start = time.monotonic()
    with dask.config.set({'distributed.comm.timeouts.connect': '2s'}), \
         pytest.raises(ConnectionError, match=r'cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9'):
        build_features(manifest.head(2), cache_dir=tmp_path, config=CFG, client='tcp://127.0.0.1:9', progress=False, modalities=('audio',))
    assert time.monotonic() - start < 60


def test_a_cluster_where_nothing_runs_does_not_hang(manifest, tmp_path):
    distributed = pytest.importorskip('distributed')
    start = time.monotonic()
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, \
         distributed.Client(cluster) as client:
        with pytest.raises(TimeoutError, match=f'Dask cluster at {cluster.scheduler_address} within 3 s'):
            build_features(manifest.head(3), cache_dir=tmp_path, config=CFG, client=client, progress=False, modalities=('audio',), timeout=3)
    assert time.monotonic() - start < 60
    assert not list((tmp_path/'features').rglob('*.npz'))


def test_a_dying_dask_worker_costs_only_its_file(manifest, built, tmp_path, monkeypatch):
    distributed = pytest.importorskip('distributed'); dask = pytest.importorskip('dask')
    _, serial = built
    monkeypatch.setattr(F, '_run_task_one_thread', _dies_on_003)
    part = manifest.head(5)
    with dask.config.set({'distributed.scheduler.allowed-failures': 1, 'distributed.scheduler.worker-saturation': 1.0}), \
         distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
         distributed.Client(cluster) as client, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fs = build_features(part, cache_dir=tmp_path, config=CFG, client=client, progress=False, modalities=('audio',), timeout=120)
    assert fs.skipped['id'].tolist() == ['003']
    assert '003.mp3' in fs.skipped['reason'].iloc[0] and 'Dask workers died' in fs.skipped['reason'].iloc[0]
    ok = (part['id'] != '003').to_numpy()
    np.testing.assert_allclose(fs.audio[ok], serial.audio[:5][ok], rtol=1e-5, atol=1e-4)


def _loky_workers() -> list:
    import psutil
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if 'popen_loky_posix' in ' '.join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE: out.append(p)
        except psutil.Error: pass
    return out


def test_an_interrupt_stops_the_worker_processes(manifest, tmp_path, monkeypatch):
    pytest.importorskip('psutil')
    real, puts = F.FeatureStore.put, []
    def put(self, *args):
        puts.append(args[1])
        if len(puts) == 2: raise KeyboardInterrupt  # Ctrl-C while the workers are busy
        real(self, *args)
    monkeypatch.setattr(F.FeatureStore, 'put', put)
    with pytest.raises(KeyboardInterrupt):
        build_features(manifest, cache_dir=tmp_path, config=CFG, n_jobs=2, progress=False, modalities=('audio',))
    deadline = time.monotonic() + 10
    while _loky_workers() and time.monotonic() < deadline: time.sleep(0.1)
    assert not _loky_workers()  # stopped within seconds, not left to finish their files
    monkeypatch.undo()
    fs = build_features(manifest, cache_dir=tmp_path, config=CFG, n_jobs=2, progress=False, modalities=('audio',))
    assert fs.mask['audio'].all()  # and the next run works (and resumes)


_AS_IN_A_NOTEBOOK = """
import sys
from pathlib import Path
src = (Path(sys.argv[1])/'mmvae'/'features.py').read_text().replace('from .data import', 'from mmvae.data import')
exec(compile(src, 'a notebook', 'exec'), globals())  # the extractors defined in __main__, as in 01's kernel under papermill
from mmvae.data import load_manifest
feats = build_features(load_manifest(sys.argv[2]), cache_dir=sys.argv[3], n_jobs=2, timeout=120, progress=False)
print(len(feats.skipped), int(feats.mask['audio'].sum()))
"""


def test_workers_extract_what_a_notebook_defines(demo, tmp_path):
    "In 01's kernel the extractors live in __main__ and reach loky workers by value: every worker must be able to run them."
    import subprocess, sys
    from conftest import TOP
    r = subprocess.run([sys.executable, '-c', _AS_IN_A_NOTEBOOK, str(TOP), str(demo), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    skipped, with_audio = map(int, r.stdout.split())
    assert skipped == len(manifest_skipped(load_manifest(demo))) and with_audio == 10, r.stderr[-2000:]


# --- affect features (issue 14): known answers ---

def _wav(path, y, sr=22050) -> Path:
    sf.write(str(path), y, sr)
    return Path(path)


def _chords(chords, shift=0, sr=22050, seconds=1.0, repeats=3):
    "A progression of sine chords (MIDI pitches), each `seconds` long, transposed by `shift` semitones."
    t = np.arange(int(sr * seconds)) / sr
    one = [sum(np.sin(2 * np.pi * 440 * 2 ** ((p + shift - 69) / 12) * t) for p in ch) for ch in chords]
    return (0.1 * np.concatenate(one * repeats)).astype(np.float32)


C_MAJOR = [[72, 76, 79], [72, 77, 81], [71, 74, 79], [72, 76, 79]]  # I IV V I: C F G C
A_MINOR = [[69, 72, 76], [69, 74, 77], [71, 76, 79], [69, 72, 76]]  # i iv v i: Am Dm Em Am
AFFECT_CFG = FeatureConfig(duration=12.0)


def _affect(tmp_path, y, name='clip.wav', config=AFFECT_CFG) -> dict:
    "The affect descriptors of `y`, through the extractor (written to a WAV file, decoded, analysed)."
    out = F.extract_audio(_wav(tmp_path/name, y), config)
    return dict(zip(F.AUDIO_AFFECT_NAMES, out['affect']))


def _profile(a) -> np.ndarray: return np.array([a[f'tonal_{i}'] for i in F.INTERVALS])


def test_affect_names_match_the_vector(tmp_path):
    out = F.extract_audio(_wav(tmp_path/'c.wav', _chords(C_MAJOR)), AFFECT_CFG)
    assert out['affect'].shape == (len(F.AUDIO_AFFECT_NAMES),) and out['affect'].dtype == np.float32
    assert len(set(F.AUDIO_AFFECT_NAMES)) == len(F.AUDIO_AFFECT_NAMES)
    assert set(out) == {'summary', 'mel', 'affect', 'warnings'} and out['warnings'].size == 0  # a clean WAV: the decoder said nothing


@pytest.mark.parametrize('chords, sign, third', [(C_MAJOR, 1, 4), (A_MINOR, -1, 3)])
def test_mode_strength_and_tonal_profile_of_major_and_minor_progressions(tmp_path, chords, sign, third):
    a = _affect(tmp_path, _chords(chords))
    assert np.sign(a['mode_strength']) == sign and abs(a['mode_strength']) > 0.1
    p = _profile(a)
    assert set(np.argsort(p)[-3:]) == {0, third, 7}  # tonic, third, fifth
    np.testing.assert_allclose(p.sum(), 1, atol=1e-5)


def test_estimated_tonic_of_the_progressions():
    chroma = lambda y: F.audio_features(y, keep=True)['frames'][:, 40:52].mean(0)  # the chroma means of the frame table
    assert F.estimate_key(chroma(_chords(C_MAJOR)))[:2] == (0, 1)  # C major
    assert F.estimate_key(chroma(_chords(A_MINOR)))[:2] == (9, 0)  # A minor


@pytest.mark.parametrize('chords', [C_MAJOR, A_MINOR])
@pytest.mark.parametrize('shift', [-3, 2, 5])
def test_tonal_profile_is_invariant_to_transposition(tmp_path, chords, shift):
    base, moved = _affect(tmp_path, _chords(chords), 'a.wav'), _affect(tmp_path, _chords(chords, shift), 'b.wav')
    np.testing.assert_allclose(_profile(moved), _profile(base), atol=0.02)
    assert np.sign(moved['mode_strength']) == np.sign(base['mode_strength'])


def test_key_mode_of_the_midi_descriptors_is_the_shared_estimate():
    rng = np.random.default_rng(3)
    for _ in range(50):
        h = rng.random(12) * (rng.random(12) > 0.3)
        tonic, major, margin, clarity = F.estimate_key(h)
        assert F.key_mode(h) == (major, margin)
        r = F.key_correlations(h)
        assert clarity == r.max() and margin == r[0].max() - r[1].max() and r[1 - major, tonic] == r.max()


@pytest.mark.parametrize('rate', [2, 4])
def test_click_train_onset_density_and_pulse_clarity(tmp_path, rate):
    sr, y = 22050, np.zeros(22050 * 12, np.float32)
    y[sr // (2 * rate)::sr // rate] = 0.8  # `rate` clicks a second, the first half a period in
    noise = (0.1 * np.random.default_rng(0).standard_normal(len(y))).astype(np.float32)
    clicks, hiss = _affect(tmp_path, y, 'clicks.wav'), _affect(tmp_path, noise, 'noise.wav')
    assert abs(clicks['onset_density'] - rate) < 0.1
    assert clicks['pulse_clarity'] > 0.8 and hiss['pulse_clarity'] < 0.3


def test_steady_tone_has_no_pulse_or_onsets(tmp_path):
    t = np.arange(22050 * 12) / 22050
    a = _affect(tmp_path, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    assert a['pulse_clarity'] == 0 and a['onset_density'] < 0.2 and abs(a['loudness_range']) < 0.1


@pytest.mark.parametrize('step_db', [6.0, 12.0])
def test_loudness_range_of_a_level_step(tmp_path, step_db):
    t = np.arange(22050 * 12) / 22050
    y = 0.05 * np.sin(2 * np.pi * 440 * t) * np.where(t < 6, 1, 10 ** (step_db / 20))
    assert abs(_affect(tmp_path, y.astype(np.float32))['loudness_range'] - step_db) < 0.2


def test_loudness_range_ignores_the_padding_of_a_short_clip(tmp_path):
    t = np.arange(22050 * 4) / 22050  # 4 s of a steady tone, padded to the 12 s analysed
    assert abs(_affect(tmp_path, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))['loudness_range']) < 0.1


def test_affect_of_silence_is_defined(tmp_path):
    out = F.audio_features(np.zeros(22050 * 3, np.float32))
    assert np.isfinite(out['affect']).all() and not out['affect'].any()


def test_bumped_audio_version_leaves_old_entries_unused():
    assert F.EXTRACTOR_VERSION['audio'] >= 3 and 'lyrics_vader' in F.EXTRACTOR_VERSION and F.CONFIG_FIELDS['lyrics_vader'] == ()


# --- lyrics sentiment (VADER) ---

def _vader(text) -> dict: return dict(zip(F.LYRICS_AFFECT_NAMES, F.lyrics_sentiment(text)))


def test_vader_ships_its_lexicon_under_the_mit_licence():
    from importlib import metadata
    import vaderSentiment
    folder = Path(vaderSentiment.__file__).parent
    assert (folder/'vader_lexicon.txt').stat().st_size > 100_000
    assert 'MIT' in metadata.metadata('vaderSentiment')['License']
    assert F.vader_version() == metadata.version('vaderSentiment')


@pytest.mark.parametrize('text', ['I love you, you make me so happy', 'What a wonderful, beautiful day\nSmile, we are free'])
def test_vader_positive_text(text):
    assert _vader(text)['vader_compound'] > 0.3 and _vader(text)['vader_pos'] > _vader(text)['vader_neg']


@pytest.mark.parametrize('text', ['I hate this lonely pain', 'Tears and sorrow\nI want to die, it hurts'])
def test_vader_negative_text(text):
    assert _vader(text)['vader_compound'] < -0.3 and _vader(text)['vader_neg'] > _vader(text)['vader_pos']


@pytest.mark.parametrize('word', ['good', 'happy', 'love it'])
def test_vader_negation_flips(word):
    assert _vader(word)['vader_compound'] > 0 > _vader(f'not {word}')['vader_compound']


def test_vader_averages_lines():
    a, b, both = _vader('I love you so much'), _vader('I hate you so much'), _vader('I love you so much\nI hate you so much')
    np.testing.assert_allclose(both['vader_compound'], (a['vader_compound'] + b['vader_compound']) / 2, atol=1e-6)
    assert (both['vader_positive_lines'], both['vader_negative_lines']) == (0.5, 0.5)


@pytest.mark.parametrize('text', ['', None, '\n\n  \n', '... !!! ???', '123 456', 'la la la', '\u263a \u00f1\u00f3 \u4f60\u597d', 'x' * 100_000])
def test_vader_odd_text_is_defined(text):
    v = F.lyrics_sentiment(text)
    assert v.shape == (len(F.LYRICS_AFFECT_NAMES),) and v.dtype == np.float32 and np.isfinite(v).all()
    assert -1 <= v[0] <= 1


def test_lyrics_affect_in_the_store_and_the_mask(demo, tmp_path, monkeypatch):
    bad = Path(shutil.copytree(demo, tmp_path/'dataset'))
    m = load_manifest(bad)
    paths = m['lyrics_path'].dropna()
    empty, odd, happy = (Path(p) for p in paths.iloc[:3])
    empty.write_text('[Chorus]\n(Repeat x2)\n', encoding='utf-8')  # nothing left after cleaning
    odd.write_text('... !!! 123\n\u263a', encoding='utf-8')  # text, but no words VADER knows
    happy.write_text('I love you, you make me so happy\nWhat a wonderful day', encoding='utf-8')
    with pytest.warns(UserWarning, match='1 input'):
        fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('lyrics',))
    row = {Path(p): i for i, p in enumerate(m['lyrics_path']) if isinstance(p, str)}
    assert not fs.mask['lyrics'][row[empty]] and not fs.lyrics_affect[row[empty]].any()
    assert empty.name in fs.skipped['reason'].iloc[0]
    assert fs.mask['lyrics'][row[odd]] and fs.lyrics_affect[row[odd], 3] == 0  # present; nothing negative
    assert fs.lyrics_affect[row[happy], 0] > 0.5
    assert not fs.lyrics_affect[~fs.mask['lyrics']].any() and fs.lyrics_affect_names == F.LYRICS_AFFECT_NAMES
    assert len(list((tmp_path/'cache'/'features'/'lyrics_vader').glob('*.npz'))) == fs.mask['lyrics'].sum()
    monkeypatch.setattr(F, 'lyrics_sentiment', _boom)  # a rerun reads them from the store
    with pytest.warns(UserWarning, match='1 input'):
        again = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('lyrics',))
    np.testing.assert_array_equal(again.lyrics_affect, fs.lyrics_affect)


def test_describe_lists_the_affect_matrices(built):
    d = built[1].describe()
    assert d.loc['audio_affect', 'modality'] == 'audio' and d.loc['lyrics_affect', 'modality'] == 'lyrics'
    assert d.loc['audio_affect', 'present'] == d.loc['audio', 'present']


def _damaged_frame_mp3(path: Path, seconds: float = 2.0, sr: int = 22050) -> Path:
    "A tone MP3 with 400 zero bytes over a frame in its middle: libmpg123 resyncs past them and says so on stderr."
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, format='MP3')
    raw = bytearray(path.read_bytes()); mid = len(raw) // 2
    raw[mid:mid + 400] = bytes(400)
    path.write_bytes(bytes(raw))
    return path


def test_decode_audio_collects_the_decoders_stderr(tmp_path, capfd):
    p = _damaged_frame_mp3(tmp_path/'damaged.mp3')
    capfd.readouterr()
    F.decode_audio(p, CFG)  # without `messages`: libmpg123 writes to fd 2, as before
    assert 'Illegal Audio-MPEG-Header' in capfd.readouterr().err
    heard = []
    y, n = F.decode_audio(p, CFG, heard)
    assert capfd.readouterr().err == '' and any('Illegal Audio-MPEG-Header' in l for l in heard) and n > 0
    heard2 = []
    F.decode_audio(p, CFG, heard2)
    assert heard2 == heard  # nothing left over from one capture to the next
    print('after'); assert capfd.readouterr().out == 'after\n'  # stdout and stderr are back


def test_decoder_warnings_are_rows_not_stderr(demo, tmp_path, monkeypatch):
    "A damaged frame decodes with libmpg123's notes: listed with the file (kept, not skipped) in worker processes, and again from the store."
    d = Path(shutil.copytree(demo, tmp_path/'dataset'))
    p = _damaged_frame_mp3(d/'Audio'/'004.mp3')
    heard = []
    F.decode_audio(p, CFG, heard)
    m = load_manifest(d)
    fs = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=2, progress=False, modalities=('audio',))
    w = fs.decoder_warnings
    assert list(w.columns) == ['id', 'modality', 'path', 'message', 'count']
    assert set(w['id']) == {'004'} and set(w['modality']) == {'audio'} and set(w['path']) == {str(p)}
    assert dict(zip(w['message'], w['count'])) == dict(Counter(heard))  # counted once, though audio and musicnn both decode it
    assert fs.skipped.empty and fs.mask['audio'].all()
    desc = fs.describe()
    assert (desc.loc['audio', 'decoder_warnings'], desc.loc['musicnn', 'decoder_warnings'], desc.loc['midi', 'decoder_warnings']) == (1, 1, 0)
    for name in ('extract_audio', 'extract_musicnn', '_run_task'): monkeypatch.setattr(F, name, _boom)
    again = build_features(m, cache_dir=tmp_path/'cache', config=CFG, n_jobs=1, progress=False, modalities=('audio',))
    pd.testing.assert_frame_equal(again.decoder_warnings, w)  # a cached file reports its warnings again


def test_a_failed_decode_keeps_the_decoders_words_in_its_reason(tmp_path, capfd):
    p = tmp_path/'id3only.mp3'; p.write_bytes(b'ID3' + bytes(100))  # an ID3 header and nothing else
    capfd.readouterr()
    with pytest.raises(F.MediaError, match=r'id3only\.mp3.*the decoder said: .*Illegal Audio-MPEG-Header'):
        F.decode_audio(p, CFG, [])
    assert capfd.readouterr().err == ''
