"""The data layer on the real subset (where present), on generated demo data, and on bad input."""
import shutil
from pathlib import Path

import pytest

from mmvae.data import (DatasetError, MediaError, find_dataset_root, load_manifest, make_demo_dataset,
                        read_audio, read_lyrics, read_midi, summarize)

REAL = Path(__file__).resolve().parents[2]/'shared'/'mirex-dev'/'dataset'
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason='real MIREX subset not present (../shared/mirex-dev)')


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp('demo')/'dataset', n_songs=20, seconds=2, seed=1)


@pytest.fixture
def demo_copy(demo, tmp_path):
    "A writable copy of the demo dataset, to break."
    return Path(shutil.copytree(demo, tmp_path/'dataset'))


@needs_real
@pytest.mark.filterwarnings('ignore::UserWarning')
def test_real_subset_manifest():
    m = load_manifest(REAL.parent)  # the download folder resolves to its dataset/ child
    assert len(m) == 903
    assert m['audio_path'].notna().sum() == 150
    assert m['cluster'].value_counts().sort_index().tolist() == [170, 164, 215, 191, 163]
    assert m['category'].nunique() == 28
    assert m['title'].notna().all() and m['artist'].notna().all()  # metadata joined for every song
    assert m.loc[m['id'] == '782', 'title'].item() == "World's a Mess; It's in My Kiss"
    assert (m.loc[m['audio_path'].isna() & m['lyrics_path'].isna() & m['midi_path'].isna(), 'problems']
            == 'no audio, lyrics or MIDI file').all()


def test_demo_layout_and_manifest(demo):
    assert sorted(p.name for p in demo.iterdir()) >= ['Audio', 'Lyrics', 'MIDIs', 'categories.txt', 'clusters.txt', 'dataset info.csv']
    assert (demo/'dataset info.csv').read_bytes()[:2] == b'\xff\xfe'  # UTF-16 LE with BOM, as the real file
    m = load_manifest(demo)
    assert len(m) == 20 and m['audio_path'].notna().all()
    assert m['cluster'].is_monotonic_increasing  # ids sorted by cluster, like the real data
    assert summarize(m).loc['total', 'songs'] == 20
    assert m['year'].isna().any() or m['year'].min() >= 1955


def test_wrong_layout(tmp_path):
    with pytest.raises(DatasetError, match='clusters.txt, categories.txt missing'):
        find_dataset_root(tmp_path)


def test_mismatched_label_files(demo_copy):
    lines = (demo_copy/'categories.txt').read_text().splitlines()
    (demo_copy/'categories.txt').write_text('\n'.join(lines[:-1]))
    with pytest.raises(DatasetError, match=r'categories.txt has 19'):
        load_manifest(demo_copy)


def test_info_csv_disagrees(demo_copy):
    raw = (demo_copy/'dataset info.csv').read_bytes().decode('utf-16')
    (demo_copy/'dataset info.csv').write_bytes('\r\n'.join(raw.split('\r\n')[:-3]).encode('utf-16'))
    with pytest.raises(DatasetError, match='dataset info.csv lists 18 songs'):
        load_manifest(demo_copy)


def test_id_without_files_and_empty_file(demo_copy):
    for f in demo_copy.glob('*/005.*'): f.unlink()
    (demo_copy/'Audio'/'006.mp3').write_bytes(b'')
    with pytest.warns(UserWarning, match='2 of 20 songs'):
        m = load_manifest(demo_copy).set_index('id')
    assert m.loc['005', 'problems'] == 'no audio, lyrics or MIDI file'
    assert 'Audio/006.mp3 is empty' in m.loc['006', 'problems'] and m['audio_path'].isna().sum() == 2


def test_corrupt_mp3(tmp_path):
    (tmp_path/'001.mp3').write_bytes(b'\xff\xfb' + bytes(range(256)) * 4)
    with pytest.raises(MediaError, match='001.mp3'):
        read_audio(tmp_path/'001.mp3')


def test_truncated_midi(demo):
    src = next((demo/'MIDIs').glob('*.mid'))
    assert read_midi(src).instruments
    bad = demo.parent/'truncated.mid'
    bad.write_bytes(src.read_bytes()[:40])
    with pytest.raises(MediaError, match='truncated.mid'):
        read_midi(bad)


@pytest.mark.parametrize('encoding', ['utf-8', 'utf-8-sig', 'utf-16', 'latin-1'])
def test_lyrics_encodings(tmp_path, encoding):
    (tmp_path/'l.txt').write_bytes('Señor, ça va\r\n[Chorus]\r\n'.encode(encoding))
    assert read_lyrics(tmp_path/'l.txt') == 'Señor, ça va\n[Chorus]'


def test_empty_lyrics_are_missing(tmp_path):
    (tmp_path/'l.txt').write_bytes(b' \r\n\r\n')
    assert read_lyrics(tmp_path/'l.txt') is None


def test_audio_padded_to_duration(demo):
    y = read_audio(demo/'Audio'/'001.mp3', sr=8000, duration=3.0)
    assert y.shape == (24000,) and abs(y[-1000:]).max() == 0  # 2-s clip, zero-padded to 3 s


def test_odd_length_utf16_lyrics_decode(tmp_path):
    (tmp_path/'l.txt').write_bytes('la la'.encode('utf-16') + b'\x00')  # a stray trailing byte
    assert read_lyrics(tmp_path/'l.txt').startswith('la la')


def test_info_csv_duplicate_ids(demo_copy):
    raw = (demo_copy/'dataset info.csv').read_bytes().decode('utf-16').split('\r\n')
    raw[2] = raw[1]  # song 001 listed twice, 002 not at all
    (demo_copy/'dataset info.csv').write_bytes('\r\n'.join(raw).encode('utf-16'))
    with pytest.raises(DatasetError, match='lists song.s. 001 more than once'):
        load_manifest(demo_copy)


def test_empty_info_csv(demo_copy):
    (demo_copy/'dataset info.csv').write_bytes(b'')
    with pytest.raises(DatasetError, match='dataset info.csv: no Filename column'):
        load_manifest(demo_copy)
