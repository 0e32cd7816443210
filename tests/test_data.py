"""The data layer on the real subset (where present), on generated demo data, and on bad input: each case asserts its
outcome (kept, skipped with its reason, or a clear error)."""
import os, shutil, warnings
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
from audioread.exceptions import NoBackendError

from conftest import REAL, needs_real
from mmvae.data import (INFO_CSV, LYRICS_MAX_BYTES, SKIPPED_COLUMNS, DatasetError, MediaError, load_manifest,
                        make_demo_dataset, manifest_counts, manifest_skipped, read_audio, read_info_csv, read_lyrics, read_midi)
SKIPPED_SUMMARY = ['skipped_audio', 'skipped_lyrics', 'skipped_midi', 'skipped_metadata']


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp('demo')/'dataset', n_songs=20, seconds=2, seed=1, p_lyrics=1.0, p_midi=1.0)


@pytest.fixture
def demo_copy(demo, tmp_path):
    "A writable copy of the demo dataset, to break."
    return Path(shutil.copytree(demo, tmp_path/'dataset'))


def load(root):
    "The manifest (indexed by id), its skipped items and the warnings raised while loading."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        m = load_manifest(root)
    return m.set_index('id'), manifest_skipped(m), [str(w.message) for w in caught]


def info_rows(root):
    "Header and rows of the demo's info CSV (UTF-16 with BOM, CRLF, trailing `;`)."
    lines = (root/INFO_CSV).read_bytes().decode('utf-16').split('\r\n')
    return lines[0], [l for l in lines[1:] if l]


def write_info(root, header, rows):
    (root/INFO_CSV).write_bytes(('\r\n'.join([header] + rows) + '\r\n').encode('utf-16'))


def cluster_of(root, i):
    "The cluster of song `i` as clusters.txt gives it."
    return int((root/'clusters.txt').read_text().split()[2 * i - 1])


def only(sk, modality, **where):
    "The one skipped row of `modality` matching `where` (column → substring)."
    hits = sk[sk['modality'] == modality]
    for col, s in where.items(): hits = hits[hits[col].astype(str).str.contains(s, regex=False)]
    assert len(hits) == 1, f"{modality} {where}: {hits.to_dict('records')} in {sk.to_dict('records')}"
    return hits.iloc[0]


# --- the real subset and the demo ------------------------------------------------------------------------------

@needs_real
def test_real_subset_manifest():
    m, sk, caught = load(REAL.parent)  # the download folder resolves to its dataset/ child
    m = m.reset_index()
    assert len(m) == 903
    assert m['audio_path'].notna().sum() == 150 and m['lyrics_path'].notna().sum() == 124 and m['midi_path'].notna().sum() == 34
    assert m['cluster'].value_counts().sort_index().tolist() == [170, 164, 215, 191, 163]
    assert m['category'].nunique() == 28
    assert m['title'].notna().all() and m['artist'].notna().all()  # metadata joined for every song
    assert m.loc[m['id'] == '782', 'title'].item() == "World's a Mess; It's in My Kiss"
    assert (m.loc[m['audio_path'].isna() & m['lyrics_path'].isna() & m['midi_path'].isna(), 'problems']
            == 'no audio, lyrics or MIDI file').all()
    assert sk.empty  # nothing is wrong in the real subset: the 753 songs without media are a partial download
    assert len(caught) == 1 and '753 of 903 songs' in caught[0]  # the only warning: songs without media
    t = manifest_counts(m)
    assert t.loc['total', SKIPPED_SUMMARY].tolist() == [0, 0, 0, 0] and t.loc['total', 'problems'] == 753


@needs_real
def test_real_lyrics_all_read_as_text():
    "The garbage detectors pass every real lyrics file."
    for p in sorted((REAL/'Lyrics').glob('*.txt')):
        text = read_lyrics(p)
        assert text and len(text) > 50, p


def test_demo_layout_and_manifest(demo):
    assert {p.name for p in demo.iterdir()} >= {'Audio', 'Lyrics', 'MIDIs', 'categories.txt', 'clusters.txt', 'dataset info.csv'}
    assert (demo/INFO_CSV).read_bytes()[:2] == b'\xff\xfe'  # UTF-16 LE with BOM, as the real file
    m = load_manifest(demo)
    assert len(m) == 20 and m['audio_path'].notna().all()
    assert m['cluster'].is_monotonic_increasing  # ids sorted by cluster, like the real data
    assert m['year'].notna().any() and m['year'].dropna().between(1955, 2009).all()  # 0 (unknown) reads as missing
    assert manifest_skipped(m).empty and list(manifest_skipped(m).columns) == list(SKIPPED_COLUMNS)
    t = manifest_counts(m)
    assert t.columns.tolist() == ['songs', 'audio', 'lyrics', 'midi', 'problems', *SKIPPED_SUMMARY]
    assert t.index.tolist() == [f'Cluster {c}' for c in range(1, 6)] + ['total']
    assert t.loc['total', 'songs'] == 20 and (t[SKIPPED_SUMMARY] == 0).all().all()


def test_manifest_skipped_without_attrs(demo, tmp_path):
    "A manifest read back from CSV carries no skipped list: an empty table with the contract's columns."
    load_manifest(demo).to_csv(tmp_path/'m.csv', index=False)
    m = pd.read_csv(tmp_path/'m.csv', dtype={'id': str})
    sk = manifest_skipped(m)
    assert sk.empty and list(sk.columns) == ['id', 'modality', 'path', 'reason']
    assert manifest_counts(m).loc['total', 'problems'] == 0  # blank problems read back as NaN are no problem


def test_nested_download_with_spaces_and_non_ascii(demo, tmp_path):
    root = Path(shutil.copytree(demo, tmp_path/'my downloads'/'émotion dätä (copy)'/'dataset'))
    m, sk, _ = load(root.parent)
    assert len(m) == 20 and sk.empty and m['title'].notna().all()
    assert read_audio(m.loc['001', 'audio_path'], sr=8000, duration=1.0).shape == (8000,)
    assert read_lyrics(m.loc['001', 'lyrics_path']) and read_midi(m.loc['001', 'midi_path']).instruments


# --- label files: still clear errors naming file and line ------------------------------------------------------

def test_mismatched_label_files(demo_copy):
    lines = (demo_copy/'categories.txt').read_text().splitlines()
    (demo_copy/'categories.txt').write_text('\n'.join(lines[:-1]))
    with pytest.raises(DatasetError, match=r'categories.txt has 19'):
        load_manifest(demo_copy)


def test_bad_cluster_line(demo_copy):
    lines = (demo_copy/'clusters.txt').read_text().splitlines()
    lines[2] = 'Cluster 9'
    (demo_copy/'clusters.txt').write_text('\n'.join(lines))
    with pytest.raises(DatasetError, match=r'clusters.txt, line 3: expected'):
        load_manifest(demo_copy)


def test_label_files_with_bom_and_lf(demo_copy):
    ref = load_manifest(demo_copy)
    (demo_copy/'clusters.txt').write_bytes(b'\xef\xbb\xbf' + (demo_copy/'clusters.txt').read_bytes().replace(b'\r\n', b'\n'))
    (demo_copy/'categories.txt').write_bytes((demo_copy/'categories.txt').read_text().encode('utf-16'))
    pd.testing.assert_frame_equal(load_manifest(demo_copy)[['id', 'cluster', 'category']], ref[['id', 'cluster', 'category']])


# --- the info CSV, row by row ----------------------------------------------------------------------------------

def test_info_row_lost_its_last_fields(demo_copy):
    header, rows = info_rows(demo_copy)
    rows[4] = ';'.join(rows[4].split(';')[:8])  # song 005 lost Filename and Genre: line 6 of the file
    write_info(demo_copy, header, rows)
    m, sk, caught = load(demo_copy)
    assert len(m) == 20 and len(sk) == 1
    s = only(sk, 'metadata')
    assert s['id'] == '' and s['path'] == str(demo_copy/INFO_CSV)
    assert f"{demo_copy/INFO_CSV}, line 6: no Filename field (8 of 10 fields)" in s['reason']
    assert pd.isna(m.loc['005', 'title']) and m.loc['005', 'cluster'] == cluster_of(demo_copy, 5) and m.loc['005', 'audio_path'].endswith('005.mp3')
    assert m.drop(index='005')['title'].notna().all()
    assert any('line 6: no Filename field' in w for w in caught)
    assert any('has no row for 1 of 20 songs (005)' in w for w in caught)
    t = manifest_counts(load_manifest(demo_copy))
    assert t.loc['total', 'skipped_metadata'] == 1 and t.loc[[f'Cluster {c}' for c in range(1, 6)], 'skipped_metadata'].sum() == 0


def test_info_row_malformed_filename(demo_copy):
    header, rows = info_rows(demo_copy)
    rows[1] = rows[1].replace('002.mp3', 'track two.mp3')
    write_info(demo_copy, header, rows)
    m, sk, _ = load(demo_copy)
    assert "line 3: malformed Filename 'track two.mp3'" in only(sk, 'metadata')['reason']
    assert pd.isna(m.loc['002', 'title']) and m.loc['002', 'audio_path'].endswith('002.mp3')


def test_info_row_wrong_field_count(demo_copy):
    header, rows = info_rows(demo_copy)
    f = rows[2].split(';'); del f[2]; rows[2] = ';'.join(f)  # song 003 lost its Album: every later field shifted
    rows[3] = 'a;b;c;d;e;f;g;h;i;j;k;l;'  # twelve fields, no file name
    write_info(demo_copy, header, rows)
    m, sk, _ = load(demo_copy)
    shifted = only(sk, 'metadata', reason='line 4:')
    assert shifted['id'] == '003' and 'line 4: 9 fields for 10 columns, the file name out of its column' in shifted['reason']
    assert 'line 5: 12 fields for 10 columns and no file name' in only(sk, 'metadata', reason='line 5:')['reason']
    assert m.loc[['003', '004'], 'title'].isna().all() and len(sk) == 2


def test_info_row_unknown_id(demo_copy):
    header, rows = info_rows(demo_copy)
    write_info(demo_copy, header, rows + [rows[0].replace('001.mp3', '904.mp3')])
    m, sk, _ = load(demo_copy)
    s = only(sk, 'metadata')
    assert s['id'] == '904' and 'line 22: song 904 (904.mp3) is not in the label files (songs 001 to 020)' in s['reason']
    assert len(m) == 20 and m['title'].notna().all()
    assert manifest_counts(load_manifest(demo_copy)).loc['total', 'skipped_metadata'] == 1


def test_info_duplicate_id_first_row_wins(demo_copy):
    header, rows = info_rows(demo_copy)
    rows[1] = rows[0].replace('Demo Song 001', 'Second Title')  # song 001 listed twice, 002 not at all
    write_info(demo_copy, header, rows)
    m, sk, caught = load(demo_copy)
    s = only(sk, 'metadata')
    assert s['id'] == '001' and 'line 3: song 001 is listed again (first on line 2): the first row is kept' in s['reason']
    assert m.loc['001', 'title'] == 'Demo Song 001' and pd.isna(m.loc['002', 'title'])
    assert any('has no row for 1 of 20 songs (002)' in w for w in caught)
    t = manifest_counts(load_manifest(demo_copy))
    assert t.loc['Cluster 1', 'skipped_metadata'] == 1 and t.loc['total', 'skipped_metadata'] == 1  # 001 is a cluster-1 song


def test_info_unpadded_filenames(demo_copy):
    header, rows = info_rows(demo_copy)
    rows = [r.replace(f'{i:03d}.mp3', f'{i}.mp3') for i, r in enumerate(rows, 1)]
    write_info(demo_copy, header, rows)
    m, sk, caught = load(demo_copy)
    assert sk.empty and m['title'].tolist() == [f'Demo Song {i:03d}' for i in range(1, 21)]
    assert not [w for w in caught if INFO_CSV in w]


def test_info_rows_missing(demo_copy):
    "Songs without a row keep their labels and media, with blank metadata and a warning (no longer a DatasetError)."
    header, rows = info_rows(demo_copy)
    write_info(demo_copy, header, rows[:-3])
    m, sk, caught = load(demo_copy)
    assert sk.empty and m['title'].isna().sum() == 3 and m['audio_path'].notna().all()
    assert any('has no row for 3 of 20 songs (018, 019, 020)' in w for w in caught)


@pytest.mark.parametrize('header', ['Title;Artist;Album;Track;Year;Length;Size;Last Modified;File;Genre;', ''])
def test_info_csv_without_filename_column(demo_copy, header):
    _, rows = info_rows(demo_copy)
    write_info(demo_copy, header, rows) if header else (demo_copy/INFO_CSV).write_bytes(b'')
    m, sk, caught = load(demo_copy)
    s = only(sk, 'metadata')
    assert s['id'] == '' and ('no Filename column in the header' if header else 'dataset info.csv: empty file') in s['reason']
    assert 'metadata ignored' in s['reason'] and any('metadata ignored' in w for w in caught)
    assert len(m) == 20 and m['audio_path'].notna().all() and ('title' not in m or m['title'].isna().all())


def test_info_csv_title_with_semicolon_and_encodings(demo_copy):
    header, rows = info_rows(demo_copy)
    rows[0] = rows[0].replace('Demo Song 001', 'One; Two')
    (demo_copy/INFO_CSV).write_bytes(('\n'.join([header] + rows)).encode('utf-8'))  # UTF-8 without BOM, LF, no final newline
    m, sk, _ = load(demo_copy)
    assert sk.empty and m.loc['001', 'title'] == 'One; Two' and m.loc['001', 'artist'].startswith('Artist')


def test_info_column_named_like_a_manifest_column(demo_copy):
    header, rows = info_rows(demo_copy)
    write_info(demo_copy, header + 'Category;', [r + 'x;' for r in rows])
    m, sk, _ = load(demo_copy)
    assert sk.empty and (m['info_category'] == 'x').all() and m['category'].ne('x').all()


def test_read_info_csv_alone(tmp_path):
    (tmp_path/INFO_CSV).write_text('Title;Filename;\nA;1.mp3;\nB;;\n')
    with pytest.warns(UserWarning, match='line 3: no Filename field'):
        info = read_info_csv(tmp_path/INFO_CSV)
    assert info['title'].to_dict() == {'001': 'A'} and manifest_skipped(info)['modality'].tolist() == ['metadata']


# --- media files -----------------------------------------------------------------------------------------------

def test_id_without_files_and_zero_byte_file(demo_copy):
    for f in demo_copy.glob('*/005.*'): f.unlink()
    (demo_copy/'Audio'/'006.mp3').write_bytes(b'')
    m, sk, caught = load(demo_copy)
    assert m.loc['005', 'problems'] == 'no audio, lyrics or MIDI file'
    s = only(sk, 'audio')
    assert s['id'] == '006' and s['reason'] == f"{demo_copy/'Audio'/'006.mp3'} is empty (0 bytes)"
    assert 'Audio/006.mp3 is empty' in m.loc['006', 'problems'] and m['audio_path'].isna().sum() == 2
    assert any('2 of 20 songs' in w for w in caught)
    t = manifest_counts(load_manifest(demo_copy))
    assert t.loc[f'Cluster {cluster_of(demo_copy, 6)}', 'skipped_audio'] == 1 and t.loc['total', 'skipped_audio'] == 1 and t.loc['total', 'problems'] == 2


@pytest.mark.parametrize('folder', ['Audio', 'Lyrics', 'MIDIs'])
def test_dangling_symlink(demo_copy, folder):
    p = next(iter(sorted((demo_copy/folder).iterdir())))
    p.unlink(); p.symlink_to(demo_copy/'nowhere'/p.name)
    m, sk, _ = load(demo_copy)
    modality = {'Audio': 'audio', 'Lyrics': 'lyrics', 'MIDIs': 'midi'}[folder]
    s = only(sk, modality)
    assert s['id'] == p.stem and s['reason'] == f"{p} is a broken symbolic link (to {demo_copy/'nowhere'/p.name})"
    assert pd.isna(m.loc[p.stem, f'{modality}_path']) and 'broken symbolic link' in m.loc[p.stem, 'problems']


def test_duplicate_media_id(demo_copy):
    shutil.copy(demo_copy/'Audio'/'001.mp3', demo_copy/'Audio'/'001.wav')
    shutil.copy(demo_copy/'Audio'/'002.mp3', demo_copy/'Audio'/'2.mp3')  # unpadded: the same song
    m, sk, _ = load(demo_copy)
    assert m.loc['001', 'audio_path'].endswith('001.mp3') and m.loc['002', 'audio_path'].endswith('002.mp3')
    assert f"001.wav is a duplicate of {demo_copy/'Audio'/'001.mp3'} (song 001)" in only(sk, 'audio', id='001')['reason']
    assert 'Audio/2.mp3 is a duplicate of' in only(sk, 'audio', id='002')['reason']


def test_empty_duplicate_does_not_win(demo_copy):
    (demo_copy/'Audio'/'001.mp3').write_bytes(b'')
    shutil.copy(demo_copy/'Audio'/'002.mp3', demo_copy/'Audio'/'001.wav')
    m, sk, _ = load(demo_copy)
    assert m.loc['001', 'audio_path'].endswith('001.wav') and 'is empty (0 bytes)' in only(sk, 'audio')['reason']


def test_stray_and_non_media_files(demo_copy):
    shutil.copy(demo_copy/'Audio'/'001.mp3', demo_copy/'Audio'/'950.mp3')
    (demo_copy/'Audio'/'desktop.ini').write_text('[.ShellClassInfo]\n')
    (demo_copy/'Audio'/'.DS_Store').write_bytes(b'\0' * 8)
    (demo_copy/'MIDIs'/'readme.txt').write_text('MIDI transcriptions\n')
    (demo_copy/'Audio'/'003.m4a').write_bytes(b'x')
    m, sk, caught = load(demo_copy)
    assert only(sk, 'audio', id='950')['reason'] == f"{demo_copy/'Audio'/'950.mp3'} has no line in the label files (songs 001 to 020): ignored"
    assert 'is not an audio file this loader reads' in only(sk, 'audio', id='003')['reason']
    assert len(sk) == 2 and any('950.mp3 has no line in the label files' in w for w in caught)
    t = manifest_counts(load_manifest(demo_copy))
    assert t.loc['total', 'skipped_audio'] == 2 and t.loc[[f'Cluster {c}' for c in range(1, 6)], 'skipped_audio'].sum() == 1


@pytest.mark.parametrize('names', [('audio', 'lyrics', 'midi'), ('AUDIO', 'LYRICS', 'MIDI'), ('Audio', 'lyrics', 'Midis')])
def test_folder_spellings(demo_copy, names):
    ref = load_manifest(demo_copy)
    for old, new in zip(('Audio', 'Lyrics', 'MIDIs'), names):
        if old != new: (demo_copy/old).rename(demo_copy/new)
    m, sk, caught = load(demo_copy)
    assert sk.empty and not any('not found' in w for w in caught)
    for col in ('audio_path', 'lyrics_path', 'midi_path'):
        assert m[col].notna().sum() == ref[col].notna().sum() == 20, col
    assert m.loc['001', 'midi_path'].endswith(f'{names[2]}/001.mid')


def test_missing_folder_and_info_csv(demo_copy):
    shutil.rmtree(demo_copy/'MIDIs'); (demo_copy/INFO_CSV).unlink()
    m, sk, caught = load(demo_copy)
    assert sk.empty and m['midi_path'].isna().all() and m['audio_path'].notna().all() and 'title' not in m
    assert any('MIDIs not found' in w for w in caught) and any('dataset info.csv not found' in w for w in caught)


def test_fifo_is_not_read(demo_copy):
    (demo_copy/'Lyrics'/'001.txt').unlink(); os.mkfifo(demo_copy/'Lyrics'/'001.txt')
    m, sk, _ = load(demo_copy)
    assert 'is not a regular file' in only(sk, 'lyrics')['reason'] and pd.isna(m.loc['001', 'lyrics_path'])
    with pytest.raises(MediaError, match='001.txt: not a regular file'):
        read_lyrics(demo_copy/'Lyrics'/'001.txt')  # refused at once, not a wait for a writer


def test_mmvae_summary_on_a_broken_copy(demo_copy, capsys):
    "The `mmvae summary` command prints the counts of a damaged copy, and a clear error for a wrong layout."
    from mmvae.analysis import main
    (demo_copy/'Audio'/'001.mp3').unlink(); (demo_copy/'Audio'/'001.mp3').symlink_to(demo_copy/'nowhere.mp3')
    header, rows = info_rows(demo_copy); rows[1] = ';'.join(rows[1].split(';')[:5]); write_info(demo_copy, header, rows)
    (demo_copy/'MIDIs').rename(demo_copy/'midi')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert main(['summary', '--data', str(demo_copy)]) == 0
    out = capsys.readouterr().out
    assert 'skipped_audio' in out and 'skipped_metadata' in out and 'Traceback' not in out
    (demo_copy/'clusters.txt').write_text('Cluster 1\nCluster x\n')
    assert main(['summary', '--data', str(demo_copy)]) == 1
    assert 'clusters.txt, line 2' in capsys.readouterr().err


# --- readers ---------------------------------------------------------------------------------------------------

def test_corrupt_mp3_reason_is_not_empty(tmp_path):
    (tmp_path/'001.mp3').write_bytes(b'\xff\xfb' + bytes(range(256)) * 4)
    with pytest.raises(MediaError, match='001.mp3') as e:
        read_audio(tmp_path/'001.mp3')
    assert not str(e.value).rstrip().endswith(':') and ('no decoder could read it' in str(e.value) or 'Error' in str(e.value))


def test_audio_exception_without_message(tmp_path, monkeypatch):
    (tmp_path/'a.mp3').write_bytes(b'x' * 100)
    def fail(*a, **k): raise EOFError()
    monkeypatch.setattr(librosa, 'load', fail)
    with pytest.raises(MediaError, match=r'a\.mp3: EOFError without a message \(the file is probably damaged or truncated\)'):
        read_audio(tmp_path/'a.mp3')
    def no_backend(*a, **k): raise NoBackendError()
    monkeypatch.setattr(librosa, 'load', no_backend)
    with pytest.raises(MediaError, match=r'a\.mp3: no decoder could read it \(NoBackendError'):
        read_audio(tmp_path/'a.mp3')


def test_truncated_midi(demo, tmp_path):
    src = next((demo/'MIDIs').glob('*.mid'))
    assert read_midi(src).instruments
    bad = tmp_path/'truncated.mid'
    bad.write_bytes(src.read_bytes()[:40])
    with pytest.raises(MediaError, match='truncated.mid'):
        read_midi(bad)


def test_audio_padded_to_duration(demo):
    y = read_audio(demo/'Audio'/'001.mp3', sr=8000, duration=3.0)
    assert y.shape == (24000,) and abs(y[-1000:]).max() == 0  # 2-s clip, zero-padded to 3 s


TEXT = 'Señor, ça va\r\n[Chorus]\r\n'


@pytest.mark.parametrize('encoding', ['utf-8', 'utf-8-sig', 'utf-16', 'utf-16-le', 'utf-16-be', 'latin-1', 'cp1252'])
def test_lyrics_encodings(tmp_path, encoding):
    (tmp_path/'l.txt').write_bytes((TEXT * 3).encode(encoding))  # utf-16-le/-be: UTF-16 without a BOM
    assert read_lyrics(tmp_path/'l.txt') == ('Señor, ça va\n[Chorus]\n' * 3).strip()


@pytest.mark.parametrize('raw', [b' \r\n\r\n', b'', '\n \t\n'.encode('utf-16')])
def test_blank_lyrics_are_missing(tmp_path, raw):
    (tmp_path/'l.txt').write_bytes(raw)
    assert read_lyrics(tmp_path/'l.txt') is None


def test_odd_length_utf16_lyrics_decode(tmp_path):
    (tmp_path/'l.txt').write_bytes('la la'.encode('utf-16') + b'\x00')  # a stray trailing byte
    assert read_lyrics(tmp_path/'l.txt') == 'la la'


GARBAGE = {
    'random bytes': (lambda rng: rng.bytes(4000), r'look like binary data, not text \(\d+% control characters'),
    'binary with control characters': (lambda rng: b'verse one\x01\x02\x03\x04\x05\x06 ' * 100, r'look like binary data'),
    'NUL bytes': (lambda rng: b'la la\x00\x00\x00la\x00' * 50, r'NUL bytes among them'),
    'BOM-less UTF-16 that is no text': (lambda rng: bytes(x for c in rng.integers(1, 9, 800) for x in (int(c), 0)), r'binary data'),
    'an HTML page': (lambda rng: b'<!DOCTYPE html>\n<html><body><div class="lyrics">oh baby<br>yeah</div></body></html>\n',
                     r"markup page, not lyrics: it holds '<!DOCTYPE'"),
    'an HTML fragment': (lambda rng: b'<div class="a"><span class="b">la</span></div>\n<div><p>la</p></div>' * 5,
                         r'markup page, not lyrics: \d+% of its characters are inside tags'),
}


@pytest.mark.parametrize('case', list(GARBAGE))
def test_garbage_lyrics_are_refused(tmp_path, case):
    make, reason = GARBAGE[case]
    p = tmp_path/'Lyrics'/'007.txt'
    p.parent.mkdir(); p.write_bytes(make(np.random.default_rng(0)))
    with pytest.raises(MediaError, match=rf'lyrics {p} .*{reason}'):
        read_lyrics(p)


def test_lyrics_with_a_few_tags_are_text(tmp_path):
    (tmp_path/'l.txt').write_text('I walk <i>alone</i> tonight\nunder the grey sky\n' * 10 + '<br>\n')
    assert read_lyrics(tmp_path/'l.txt').startswith('I walk <i>alone</i>')


@pytest.mark.parametrize('encoding', ['utf-8', 'utf-16'])
def test_huge_lyrics_are_capped_with_a_warning(tmp_path, encoding):
    p = tmp_path/'huge lyrics é.txt'
    p.write_bytes(('la la la, ça va\n' * 350_000).encode(encoding))  # ~6 MB
    with pytest.warns(UserWarning, match=rf"lyrics {p} are [\d,]+ bytes: only the first {LYRICS_MAX_BYTES:,} are read"):
        text = read_lyrics(p)
    assert len(text.encode(encoding)) <= LYRICS_MAX_BYTES and text.endswith('la la la, ça va')  # whole lines, no broken character
    assert set(text.split('\n')) == {'la la la, ça va'}


@needs_real
def test_lyrics_cap_is_far_above_real_lyrics():
    assert LYRICS_MAX_BYTES >= 20 * max(p.stat().st_size for p in (REAL/'Lyrics').glob('*.txt'))
