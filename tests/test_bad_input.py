"""The bad-input corpus: a generated dataset in the real layout in which every kind of damage a user's copy may hold
has its own song, and each case's outcome (kept, skipped with a reason, or a clear error) is asserted through
`load_manifest`, `build_features` and a tiny `mmvae reproduce`."""
import hashlib, json, os, re, shutil, subprocess, sys, warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmvae.data import DatasetError, INFO_CSV, load_manifest, make_demo_dataset, manifest_skipped, read_lyrics, manifest_counts
from mmvae.features import FeatureConfig, build_features

N_SONGS = 30
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the warnings are the point here: asserted where they matter


@dataclass(frozen=True)
class Case:
    "One damaged input and what must become of it."
    name: str  # what was done to it
    modality: str  # audio, lyrics, midi or metadata
    id: str  # the song it belongs to ('' for a metadata row with no usable id)
    at: str  # 'kept'; else where it is left out: 'manifest' (load_manifest) or 'features' (build_features)
    reason: str = ''  # regex the reason must match (case-insensitive), when left out

    @property
    def skipped(self) -> bool: return self.at != 'kept'


def _write_audio(path, seconds, sr=22050, fmt='MP3', tone=True):
    import soundfile as sf
    t = np.arange(int(seconds * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * 220 * t) if tone else np.zeros_like(t)).astype(np.float32)
    sf.write(path, y, sr, format=fmt)


def _midi(path, notes=(), drums=(), tempo=120.0):
    import pretty_midi
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    if notes:
        inst = pretty_midi.Instrument(program=0)
        inst.notes += [pretty_midi.Note(90, p, t, t + .5) for t, p in notes]
        pm.instruments.append(inst)
    if drums:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        kit.notes += [pretty_midi.Note(100, 36, t, t + .1) for t in drums]
        pm.instruments.append(kit)
    pm.write(str(path))


def _absurd_tempo_midi(path):
    "A valid MIDI file whose tempo event asks for 1 µs per beat (6e7 BPM), as a damaged file may."
    import mido
    mid = mido.MidiFile(ticks_per_beat=480)
    tr = mido.MidiTrack(); mid.tracks.append(tr)
    tr.append(mido.MetaMessage('set_tempo', tempo=1, time=0))
    for k, p in enumerate((60, 64, 67, 72)):
        tr.append(mido.Message('note_on', note=p, velocity=90, time=0 if k == 0 else 240))
        tr.append(mido.Message('note_off', note=p, velocity=0, time=240))
    mid.save(str(path))


def build_corpus(tmp: Path) -> tuple[Path, list[Case]]:
    "A damaged copy of a 30-song demo dataset, nested as a Kaggle download under a path with spaces and non-ASCII."
    src = make_demo_dataset(tmp/'src', n_songs=N_SONGS, seconds=3.0, seed=3, p_lyrics=1.0, p_midi=1.0)
    download = tmp/'my downloads'/'émotion dätä'
    root = Path(shutil.copytree(src, download/'dataset'))
    (root/'mmvae-demo.json').unlink()  # a user's dataset, not a generated one: clips are read for 30 s
    A, L, M = root/'Audio', root/'Lyrics', root/'MIDIs'
    rng = np.random.default_rng(0)
    cases = []
    def case(*a, **k): cases.append(Case(*a, **k))

    # 001 is the first song with all three modalities, and all three are broken: the notebooks' examples must cope
    (A/'001.mp3').write_bytes(rng.bytes(6000)); case('random-byte MP3', 'audio', '001', 'features', r'cannot decode')
    (M/'001.mid').write_bytes(rng.bytes(300)); case('garbage MIDI', 'midi', '001', 'features', r'cannot parse MIDI')
    (L/'001.txt').write_text(' \n\t\n  \n'); case('blank lyrics', 'lyrics', '001', 'features', r'no text|blank|empty')
    # audio
    (A/'002.mp3').write_bytes(b''); case('zero-byte MP3', 'audio', '002', 'manifest', r'empty')
    raw = (A/'003.mp3').read_bytes(); (A/'003.mp3').write_bytes(raw[:len(raw) // 3]); case('truncated MP3', 'audio', '003', 'kept')
    _write_audio(A/'004.mp3', 3.0, fmt='WAV'); case('WAV renamed .mp3', 'audio', '004', 'kept')
    _write_audio(A/'005.mp3', 0.05); case('very short clip (50 ms)', 'audio', '005', 'kept')
    _write_audio(A/'006.mp3', 45.0); case('very long clip (45 s)', 'audio', '006', 'kept')
    _write_audio(A/'007.mp3', 3.0, tone=False); case('silence', 'audio', '007', 'kept')
    (A/'008.mp3').unlink(); (A/'008.mp3').symlink_to(tmp/'nowhere'/'008.mp3')
    case('dangling symlink in Audio/', 'audio', '008', 'manifest', r'symlink|link|does not exist|missing|cannot')
    raw = bytearray((A/'019.mp3').read_bytes()); raw[len(raw) // 2:len(raw) // 2 + 400] = bytes(400); (A/'019.mp3').write_bytes(raw)
    case('MP3 with a damaged frame (decoded, libmpg123 notes it)', 'audio', '019', 'kept')
    _write_audio(A/'009.wav', 3.0, fmt='WAV'); case('second audio file for one id (009.wav beside 009.mp3)', 'audio', '009', 'manifest', r'duplicate|more than one|also')
    # lyrics
    (L/'010.txt').write_bytes(b''); case('zero-byte lyrics', 'lyrics', '010', 'manifest', r'empty')
    (L/'011.txt').write_bytes('Café au lait, déjà vu\nna na na\n'.encode('latin-1')); case('Latin-1 lyrics', 'lyrics', '011', 'kept')
    (L/'012.txt').write_text('Über the moon\nand back again\n', encoding='utf-16'); case('UTF-16 lyrics with BOM', 'lyrics', '012', 'kept')
    (L/'013.txt').write_bytes('Under the moon\nand back again\n'.encode('utf-16-le')); case('UTF-16 lyrics without BOM', 'lyrics', '013', 'kept')
    (L/'014.txt').write_bytes(rng.bytes(4000)); case('binary lyrics (random bytes)', 'lyrics', '014', 'features', r'binary|not text|control|NUL|garbage')
    (L/'015.txt').write_text(('la la love the night away\n' * 200_000)); case('huge lyrics (5 MB)', 'lyrics', '015', 'kept')
    (L/'016.txt').write_text('[Chorus]\n\n(Verse 2)\nRepeat x2\n[Instrumental]\n'); case('only section markers', 'lyrics', '016', 'features', r'no text')
    (L/'017.txt').write_text('<!DOCTYPE html>\n<html><head><title>Lyrics</title></head><body><div class="lyrics">'
                             'oh baby<br>yeah</div><script>var x = 1;</script></body></html>\n')
    case('an HTML page saved as lyrics', 'lyrics', '017', 'features', r'html|markup')
    (L/'018.txt').unlink(); (L/'018.txt').symlink_to(tmp/'nowhere'/'018.txt')
    case('dangling symlink in Lyrics/', 'lyrics', '018', 'manifest', r'symlink|link|does not exist|missing|cannot')
    # MIDI
    (M/'020.mid').write_bytes(b''); case('zero-byte MIDI', 'midi', '020', 'manifest', r'empty')
    raw = (M/'021.mid').read_bytes(); (M/'021.mid').write_bytes(raw[:40]); case('truncated MIDI', 'midi', '021', 'features', r'cannot parse MIDI')
    _midi(M/'022.mid'); case('MIDI without notes', 'midi', '022', 'features', r'no notes')
    _midi(M/'023.mid', drums=[k / 2 for k in range(16)]); case('drums-only MIDI', 'midi', '023', 'kept')
    _absurd_tempo_midi(M/'024.mid'); case('absurd tempo (6e7 BPM)', 'midi', '024', 'kept')
    (M/'025.mid').unlink(); (M/'025.mid').symlink_to(tmp/'nowhere'/'025.mid')
    case('dangling symlink in MIDIs/', 'midi', '025', 'manifest', r'symlink|link|does not exist|missing|cannot')
    # the info CSV (UTF-16 with BOM, CRLF, ';'-separated with a trailing ';'), row by row
    info = root/INFO_CSV
    lines = info.read_bytes().decode('utf-16').split('\r\n')
    header, rows = lines[0], [l for l in lines[1:] if l]
    by_id = {r.split(';')[8].split('.')[0]: r for r in rows}
    lost = ';'.join(by_id['026'].split(';')[:6])  # the row lost its last fields, Filename among them
    rows[rows.index(by_id['026'])] = lost
    rows[rows.index(by_id['027'])] = by_id['027'].replace('027.mp3', '27.mp3')  # an unpadded file name
    rows.append(by_id['028'].replace('Demo Song 028', 'Another Title'))  # a second row for one id
    rows.append(by_id['029'].replace('029.mp3', '931.mp3'))  # an id the label files do not have
    rows.append('Bad;Row;Without;Enough;Fields')
    info.write_bytes(('\r\n'.join([header] + rows) + '\r\n').encode('utf-16'))
    line = lambda r: 2 + rows.index(r)
    case('info row that lost its Filename', 'metadata', '', 'manifest', rf'line {line(lost)}\b')
    case('info row with a second entry for one id', 'metadata', '028', 'manifest', rf'line {len(rows) - 1}\b.*(duplicate|more than once|again|already)')
    case('info row with an id not in the label files', 'metadata', '931', 'manifest', rf'line {len(rows)}\b')
    case('info row with too few fields', 'metadata', '', 'manifest', rf'line {len(rows) + 1}\b')
    # stray files, which must be ignored (the .bat scripts are data: never executed)
    (A/'desktop.ini').write_text('[.ShellClassInfo]\n'); (root/'Thumbs.db').write_bytes(b'\0' * 64)
    (M/'readme.txt').write_text('MIDI transcriptions\n')
    _write_audio(A/'950.mp3', 1.0); case('audio file with no line in the label files', 'audio', '950', 'manifest', r'no line in the label files|not in the label files')
    canary = tmp/'executed.txt'
    (root/'split-by-categories-audio.bat').write_text(f'echo pwned > "{canary}"\r\n')
    return download, cases


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('corpus')
    download, cases = build_corpus(tmp)
    return tmp, download, cases


def _tree_digest(root: Path) -> dict:
    "File → SHA-256 (symlinks by target), to show that nothing in the dataset is written."
    out = {}
    for p in sorted(root.rglob('*')):
        if p.is_symlink(): out[str(p)] = 'link:' + os.readlink(p)
        elif p.is_file(): out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _check_skipped(skipped: pd.DataFrame, cases, where: str):
    "Every skipped case exactly once, with a reason naming its file; no kept case among the skipped."
    for c in cases:
        hits = skipped[(skipped['modality'] == c.modality) & (skipped['id'].fillna('').astype(str) == c.id)]
        if c.modality == 'metadata' and c.id == '':  # rows without an id: found by their line number
            hits = hits[hits['reason'].str.contains(c.reason, case=False, regex=True)]
        if not c.skipped:
            assert hits.empty, f"{where}: {c.name} ({c.modality} {c.id}) should be kept, skipped as {hits['reason'].tolist()}"
            continue
        assert len(hits) == 1, f"{where}: {c.name} ({c.modality} {c.id}) should be skipped once, found {hits['reason'].tolist()}"
        reason = hits['reason'].iloc[0]
        assert re.search(c.reason, reason, re.I), f"{where}: {c.name}: reason {reason!r} does not match {c.reason!r}"
        named = INFO_CSV if c.modality == 'metadata' else f'{c.id}.'
        assert named in reason, f"{where}: {c.name}: reason {reason!r} does not name the file"


def _check_decoder_warnings(warned: pd.DataFrame, skipped: pd.DataFrame):
    "The damaged frame's notes are listed with its file, which is kept; no skipped file is listed."
    assert set(warned['modality']) == {'audio'} and '019' in set(warned['id'].astype(str))
    assert warned.loc[warned['id'].astype(str) == '019', 'message'].str.contains('Illegal Audio-MPEG-Header').any()
    assert not set(warned['path']) & set(skipped['path'])


def test_manifest_on_the_corpus(corpus):
    tmp, download, cases = corpus
    before = _tree_digest(download)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        m = load_manifest(download)  # the download folder resolves to its dataset/ child
    assert len(m) == N_SONGS and m['id'].tolist() == [f'{i:03d}' for i in range(1, N_SONGS + 1)]
    sk = manifest_skipped(m)
    assert list(sk.columns) == ['id', 'modality', 'path', 'reason']
    at_manifest = [c for c in cases if c.at != 'features']  # the others are found when their files are decoded
    _check_skipped(sk, at_manifest, 'manifest')
    assert len(sk) == sum(c.at == 'manifest' for c in cases)
    songs = m.set_index('id')
    for c in cases:  # a song keeps its other modalities and its labels, whatever happened to one of its files
        if c.modality != 'metadata' and c.id in songs.index and c.at == 'manifest' and 'duplicate' not in c.reason:
            assert pd.isna(songs.loc[c.id, f'{c.modality}_path']), c.name
    assert songs.loc['009', 'audio_path'].endswith('009.mp3')  # the duplicate rule: the first suffix of SUFFIXES wins
    assert pd.isna(songs.loc['026', 'title']) and songs.loc['026', 'cluster'] == 5  # blank metadata, labels kept
    assert songs.loc['027', 'title'] == 'Demo Song 027'  # '27.mp3' matched to song 027
    assert songs.loc['028', 'title'] == 'Demo Song 028'  # the first row of a duplicated id wins
    assert songs['audio_path'].notna().sum() == N_SONGS - 2  # 001 is kept in the manifest (decoding fails later), 002 and 008 are not
    t = manifest_counts(m)
    assert t.loc['total', 'songs'] == N_SONGS and t.loc['total', 'audio'] == N_SONGS - 2
    for mod in ('audio', 'lyrics', 'midi', 'metadata'):  # the summary counts what the skipped table lists
        assert t.loc['total', f'skipped_{mod}'] == (sk['modality'] == mod).sum(), mod
    for w in caught: assert 'Traceback' not in str(w.message)
    assert _tree_digest(download) == before  # nothing in the dataset was written


def test_label_files_and_layout_variants(corpus, tmp_path):
    "Line endings, BOMs, extra columns, a missing info CSV and lowercase folders are read; a bad label line is a clear error."
    _, download, _ = corpus
    root = Path(shutil.copytree(download/'dataset', tmp_path/'v', symlinks=True))
    ref = load_manifest(root)
    clusters = (root/'clusters.txt').read_text()
    (root/'clusters.txt').write_bytes(b'\xef\xbb\xbf' + clusters.replace('\r\n', '\n').encode())  # UTF-8 BOM, LF
    (root/'categories.txt').write_bytes((root/'categories.txt').read_text().encode('utf-16'))  # UTF-16 BOM, CRLF
    lines = (root/INFO_CSV).read_bytes().decode('utf-16').split('\r\n')
    extra = [lines[0] + 'Comment;'] + [l + 'ok;' if l else l for l in lines[1:]]
    (root/INFO_CSV).write_bytes('\n'.join(extra).encode('utf-16'))  # an extra column, LF line ends
    m = load_manifest(root)
    pd.testing.assert_frame_equal(m[['id', 'cluster', 'category', 'title']], ref[['id', 'cluster', 'category', 'title']])
    assert (m.loc[m['title'].notna(), 'comment'] == 'ok').all()
    for d, low in (('Audio', 'audio'), ('Lyrics', 'lyrics'), ('MIDIs', 'midi')): (root/d).rename(root/low)
    (root/INFO_CSV).unlink()
    with pytest.warns(UserWarning, match='not found'):
        m = load_manifest(root)
    assert m['title'].isna().all() if 'title' in m else True
    for col in ('audio_path', 'lyrics_path', 'midi_path'):
        assert m[col].notna().sum() == ref[col].notna().sum(), col
    (root/'clusters.txt').write_text(clusters.replace('Cluster 3', 'Cluster three', 1))
    with pytest.raises(DatasetError, match=r'clusters\.txt, line \d+'):
        load_manifest(root)


def test_features_on_the_corpus(corpus):
    tmp, download, cases = corpus
    m = load_manifest(download)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fs = build_features(m, cache_dir=tmp/'cache', config=FeatureConfig(), n_jobs=2, progress=False)
    _check_skipped(fs.skipped, cases, 'features')
    assert len(fs.skipped) == sum(c.skipped for c in cases)  # nothing else is skipped, nothing twice
    row = {i: k for k, i in enumerate(fs.ids)}
    for c in cases:
        if c.modality in fs.mask and c.id in row and 'duplicate' not in c.reason:
            assert fs.mask[c.modality][row[c.id]] == (not c.skipped), c.name
    d = fs.describe()
    for features, mod in (('audio', 'audio'), ('lyrics_emb', 'lyrics'), ('midi', 'midi')):
        assert d.loc[features, 'skipped'] == sum(c.skipped and c.modality == mod for c in cases), features
    _check_decoder_warnings(fs.decoder_warnings, fs.skipped)
    tempo = fs.midi[row['024'], fs.midi_names.index('tempo_file')]
    assert 20 <= tempo <= 400, tempo  # an absurd tempo event is not a feature
    assert np.isfinite(fs.audio).all() and np.isfinite(fs.midi).all() and np.isfinite(fs.lyrics_emb).all()
    assert 'café' in read_lyrics(download/'dataset'/'Lyrics'/'011.txt').lower()
    assert read_lyrics(download/'dataset'/'Lyrics'/'013.txt').startswith('Under the moon')
    with pytest.warns(UserWarning, match=r'015\.txt'):  # the huge file is read up to a cap, and says so
        text = read_lyrics(download/'dataset'/'Lyrics'/'015.txt')
    assert 0 < len(text) < 5_000_000


def test_reproduce_on_the_corpus(corpus):
    "The whole study runs on the damaged dataset; skipped.csv lists every bad input once; nothing in the dataset is run or written."
    tmp, download, cases = corpus
    before = _tree_digest(download)
    out = tmp/'run'
    mmvae = Path(sys.executable).parent/'mmvae'
    r = subprocess.run([str(mmvae), 'reproduce', '--profile', 'tiny', '--data', str(download), '--out', str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    skipped = pd.read_csv(out/'results'/'features'/'skipped.csv', dtype={'id': str}, keep_default_na=False)
    _check_skipped(skipped, cases, 'skipped.csv')
    _check_decoder_warnings(pd.read_csv(out/'results'/'features'/'decoder_warnings.csv', dtype={'id': str}, keep_default_na=False), skipped)
    assert len(skipped) == sum(c.skipped for c in cases)
    shapes = pd.read_csv(out/'results'/'features'/'feature_shapes.csv', index_col=0)
    assert shapes.loc['audio', 'skipped'] == sum(c.skipped and c.modality == 'audio' for c in cases)
    counted = pd.read_csv(out/'results'/'data'/'manifest_summary.csv', index_col=0)
    assert counted.loc['total', 'songs'] == N_SONGS
    summary = pd.read_csv(out/'results'/'summary.csv')
    assert set(summary['task']) == {'easy', 'medium', 'hard'}
    assert not (tmp/'executed.txt').exists()  # the dataset's .bat scripts are data
    assert _tree_digest(download) == before
