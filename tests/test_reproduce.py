"""`mmvae reproduce` end to end on a tiny demo profile, a failing notebook, and the docs preview in Chromium."""
import json, re, shutil, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from mmvae.analysis import NOTEBOOKS, ReproduceError, explorer, latent_files, notebooks_dir, reproduce

TOP = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "A whole reproduction with the tiny profile, through the console script."
    out = tmp_path_factory.mktemp('run')
    mmvae = Path(sys.executable).parent/'mmvae'
    r = subprocess.run([str(mmvae), 'reproduce', '--profile', 'tiny', '--out', str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def test_cli_runs_every_notebook(tiny_run):
    out, stdout = tiny_run
    assert sorted(p.stem for p in (out/'notebooks').glob('*.ipynb')) == list(NOTEBOOKS)
    summary = pd.read_csv(out/'results'/'summary.csv')
    assert {'task', 'representation', 'clusterer', 'nmi_mean', 'nmi_std'} <= set(summary.columns)
    assert set(summary['task']) == {'easy', 'medium', 'hard'}
    assert 'Results (mean ± std over seeds' in stdout and '★' in stdout and 'Dataset' in stdout
    params = json.loads((out/'profile.json').read_text())
    assert params['profile'] == 'tiny' and params['seeds'] == [0]
    checks = lambda p: sum('check' in c['metadata'].get('tags', []) for c in json.loads(p.read_text())['cells'])
    assert sum(map(checks, notebooks_dir().glob('0*.ipynb'))) >= 3 and sum(map(checks, (out/'notebooks').glob('*.ipynb'))) == 0


def test_explorer_on_a_run(tiny_run):
    "The explorer's widgets: pick a space and a clusterer, click a song, list a cluster."
    from html import escape
    from plotly.callbacks import Points
    from mmvae.data import load_manifest
    out, _ = tiny_run
    manifest = load_manifest(json.loads((out/'profile.json').read_text())['data_dir'])
    box = explorer(out/'results', manifest, cache=out/'cache'/'maps')
    (space, by), fig, (left, right) = box.children[0].children, box.children[1], box.children[2].children
    (card, player), (group, members) = left.children, right.children
    assert set(space.options) == set(latent_files(out/'results')) and len(space.options) >= 10
    space.value = 'hard: tri_modal_vae'
    assert by.options[0] == 'true mood' and 'kmeans' in by.options
    by.value = 'kmeans'
    xs = fig.data[0].x
    assert len(xs) == len(manifest.dropna(subset=['audio_path'])) and set(fig.data[0].marker.color) <= set(range(5))
    fig.data[0]._dispatch_on_click(Points(point_inds=[0], xs=[xs[0]], ys=[fig.data[0].y[0]], trace_name='', trace_index=0), None)
    title = fig.data[0].text[0].split(' — ')[0]
    assert f'<b>{escape(title)}</b>' in card.value and 'mood cluster' in card.value and 'predicted cluster' in card.value
    sid = re.search(r'song (\S+) ·', card.value).group(1)
    assert player.value == Path(manifest.set_index('id').loc[sid, 'audio_path']).read_bytes()  # its clip, ready to play
    group.value = group.options[-1]
    assert members.value.count('<br>') + 1 == list(fig.data[0].marker.color).count(group.value)


def _notebooks_with_failure(tmp_path, name, position, message) -> Path:
    "A copy of the notebooks in which notebook `name` raises RuntimeError(message) at cell `position`."
    nbs = tmp_path/'nbs'
    nbs.mkdir()
    for n in NOTEBOOKS: shutil.copy(notebooks_dir()/f'{n}.ipynb', nbs)
    nb = json.loads((nbs/f'{name}.ipynb').read_text())
    nb['cells'].insert(position, {'cell_type': 'code', 'id': 'failing', 'metadata': {}, 'outputs': [], 'execution_count': None,
                                  'source': f'raise RuntimeError("{message}")'})
    (nbs/f'{name}.ipynb').write_text(json.dumps(nb))
    return nbs


def test_failing_notebook_stops_the_run(tmp_path):
    nbs = _notebooks_with_failure(tmp_path, '01_features', 2, 'feature extraction exploded')
    with pytest.raises(ReproduceError, match='notebook 01_features failed: RuntimeError: feature extraction exploded'):
        reproduce('tiny', out=tmp_path/'run', nbs=nbs, only=['00', '01', '02'])
    assert not (tmp_path/'run'/'notebooks'/'02_easy_vae_pca.ipynb').exists()  # stopped at the failure


def test_failing_task_notebook_stops_the_queue(tmp_path):
    "With the task notebooks run one after another, a failure in 02 means 03 never starts."
    nbs = _notebooks_with_failure(tmp_path, '02_easy_vae_pca', 1, 'easy task exploded')
    with pytest.raises(ReproduceError, match='notebook 02_easy_vae_pca failed: RuntimeError: easy task exploded'):
        reproduce('tiny', out=tmp_path/'run', nbs=nbs, only=['02', '03'], concurrent=1)
    assert not (tmp_path/'run'/'notebooks'/'03_medium_hybrid.ipynb').exists()


@pytest.mark.skipif(CHROMIUM is None, reason='chromium not installed')
def test_docs_preview_in_browser(tiny_run, tmp_path):
    "Every preview page loads, every plotly figure draws (with plotly.js embedded, offline), and the browser logs no error."
    from playwright.sync_api import sync_playwright
    out, _ = tiny_run
    site = tmp_path/'site'
    r = subprocess.run([sys.executable, str(TOP/'tools'/'preview_docs.py'), str(out/'notebooks'), '--out', str(site)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    pages = sorted(site.glob('*.html'))
    assert {p.stem for p in pages} >= {'index', 'home', *NOTEBOOKS}
    external = []
    def stub(route):  # this machine is offline: the page template's CDN scripts (require.js, MathJax, the widget manager) are answered empty
        external.append(route.request.url)
        route.fulfill(status=200, body='', content_type='application/javascript')
    flags = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
             '--disable-sync', '--no-first-run']
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        for page_file in pages:
            page, errors = browser.new_page(), []
            page.route(re.compile(r'^https?://'), stub)
            page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.goto(page_file.as_uri(), wait_until='load')
            page.wait_for_timeout(300)
            assert page.title() or page_file.stem == 'home'
            divs = page.locator('.plotly-graph-div').count()
            drawn = page.locator('.plotly-graph-div:has(.main-svg)').count()
            assert drawn == divs, f'{page_file.name}: {divs - drawn} of {divs} plotly figures did not draw'
            assert not errors, f'{page_file.name}: console errors {errors[:3]}'
            page.close()
        browser.close()
    assert any(page_file.read_text().count('plotly-graph-div') for page_file in pages)  # figures were there to check
    assert {u.split('/')[2] for u in external} <= {'cdnjs.cloudflare.com', 'unpkg.com'}  # plotly.js is embedded: figures need no network
