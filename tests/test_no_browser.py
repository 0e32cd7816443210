"""PNG export on a machine without a usable browser, and a renderer that dies or hangs: HTML figures, one warning, no hang.

A user without Chrome/Chromium is simulated with `BROWSER_PATH` pointing at a missing file: choreographer (kaleido's browser
lookup) takes `BROWSER_PATH` before `PATH` and before its fixed places (/usr/bin/chromium, ...), so this hides an installed
browser without root. In that environment kaleido's own in-process server waits for ever on its first figure (issue 12).
Every scenario runs in a process of its own under a timeout, so a regression fails instead of hanging the suite.
"""
import json, os, subprocess, sys, time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HINT = 'apt-get install chromium'


def no_browser_env(tmp: Path) -> dict:
    "The environment of a user on whose machine kaleido finds no browser."
    env = dict(os.environ, BROWSER_PATH=str(tmp/'no-browser'/'chromium'),  # nothing there
               XDG_DATA_HOME=str(tmp/'xdg'))  # nor a browser kaleido downloaded for this user (choreographer's user data dir)
    check = 'from choreographer.browsers.chromium import Chromium; print(Chromium.find_browser(skip_local=False))'
    found = subprocess.run([sys.executable, '-c', check], env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    if found and Path(found).is_file(): pytest.skip(f'cannot hide the browser from kaleido here: it finds {found}')
    return env


def run_scenario(name: str, out: Path, env=None, timeout: float = 180, *args) -> dict:
    "Run `_scenario_<name>(out, *args)` of this file in a fresh Python process, bounded; return what it returns."
    code = f'import json, sys; sys.path.insert(0, {str(TESTS)!r}); import test_no_browser as t; ' \
           f'print(json.dumps(t._scenario_{name}(*sys.argv[1:])))'
    r = subprocess.run([sys.executable, '-c', code, str(out), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


# --- the scenarios (run in a child process) ------------------------------------------------------------------------

def _figure(k=0):
    from mmvae.core import confusion
    return confusion([1, 2, 2, 3], [0, 1, 1, k])


def _saves(out, names, before=None):
    "save_figure for each name (a fresh figure each), recording the warnings and the time each took."
    import warnings
    from mmvae.core import save_figure
    saved, seconds = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for k, name in enumerate(names):
            if before and k in before: before[k]()
            t = time.perf_counter()
            saved.append([f.name for f in save_figure(_figure(k), Path(out)/name)])
            seconds.append(time.perf_counter() - t)
    return dict(saved=saved, seconds=seconds, warnings=[str(w.message) for w in caught if issubclass(w.category, UserWarning)],
                stray=[p.name for p in Path(out).iterdir() if p.name.startswith('.')])  # temporary files left beside the figures


def _scenario_plain(out, skip_check=''):
    "Three figures; with skip_check the cheap browser check is skipped, so the renderer itself meets the missing browser."
    import mmvae.core as core
    if skip_check: core._no_browser = lambda: None
    return _saves(out, 'abc') | dict(renderer=core._PNG['renderer'] is not None)


def _scenario_broken(out, how, timeout):
    "One PNG, then the renderer dies (`kill`) or hangs (`stop`) before the next two figures."
    import signal, psutil
    import mmvae.core as core
    core._PNG['timeout'] = float(timeout)
    family, names = [], []
    def break_it():
        r = core._PNG['renderer']
        family.extend(psutil.Process(r.proc.pid).children(recursive=True) + [psutil.Process(r.proc.pid)])
        names.extend(p.name() for p in family)
        os.kill(r.proc.pid, signal.SIGKILL if how == 'kill' else signal.SIGSTOP)
    result = _saves(out, 'abc', before={1: break_it})
    gone, alive = psutil.wait_procs(family, timeout=15)
    return result | dict(browser=any('chrom' in n.lower() for n in names), left=[p.pid for p in alive])


def _scenario_hanging_browser(out, timeout):
    "A 'browser' that starts but never answers (a script that sleeps): the renderer's start is bounded, nothing is left."
    import psutil
    import mmvae.core as core
    core._PNG['timeout'] = float(timeout)
    result = _saves(out, 'ab')
    time.sleep(1)
    left = [p.pid for p in psutil.process_iter(['cmdline']) if (p.info['cmdline'] or [])[:2] == ['sleep', '617']]
    return result | dict(left=left)


# --- the tests -----------------------------------------------------------------------------------------------------

def test_no_browser_html_only_quickly_one_warning(tmp_path):
    r = run_scenario('plain', tmp_path, no_browser_env(tmp_path), 120)
    assert r['saved'] == [['a.html'], ['b.html'], ['c.html']] and not list(tmp_path.glob('*.png'))
    w, = r['warnings']  # once
    assert w.startswith('PNG export is unavailable: no browser at BROWSER_PATH=') and HINT in w and 'get_chrome' not in w
    assert not r['renderer']  # the check found no browser: no renderer was started
    assert max(r['seconds']) < 30  # no wait on a browser (an upper bound that only proves "does not hang")


def test_renderer_that_finds_no_browser(tmp_path):
    "Past the check (as if it had found something), the renderer itself meets the missing browser: one warning, HTML."
    r = run_scenario('plain', tmp_path, no_browser_env(tmp_path), 180, 'skip')
    assert r['saved'] == [['a.html'], ['b.html'], ['c.html']]
    w, = r['warnings']
    assert w.startswith('PNG export is unavailable: the renderer failed: kaleido found no Chrome or Chromium') and HINT in w


def test_browser_that_never_answers(tmp_path):
    fake = tmp_path/'bin'/'chromium'
    fake.parent.mkdir(); fake.write_text('#!/bin/sh\nexec sleep 617\n'); fake.chmod(0o755)
    env = dict(no_browser_env(tmp_path), BROWSER_PATH=str(fake))
    r = run_scenario('hanging_browser', tmp_path, env, 180, 3)
    assert r['saved'] == [['a.html'], ['b.html']]
    w, = r['warnings']
    assert w.startswith('PNG export is unavailable: the renderer took more than 6 s to start its browser') and HINT in w
    assert r['seconds'][0] < 60 and r['left'] == []  # bounded, and the "browser" was ended with the renderer


def _needs_browser():
    from mmvae.core import _no_browser
    if (why := _no_browser()) is not None: pytest.skip(f'PNG export needs a browser: {why}')


@pytest.mark.parametrize('how, reason', [('kill', 'the renderer process died (killed by signal 9)'),
                                         ('stop', 'the renderer took more than 5 s to draw a figure')])
def test_renderer_that_dies_or_hangs_mid_run(tmp_path, how, reason):
    _needs_browser()
    r = run_scenario('broken', tmp_path, None, 240, how, 5)
    assert r['saved'] == [['a.html', 'a.png'], ['b.html'], ['c.html']]  # a PNG while it worked, HTML after
    w, = r['warnings']
    assert w.startswith(f'PNG export is unavailable: {reason}') and HINT in w
    assert r['browser'] and r['left'] == [] and r['stray'] == []  # the renderer and its browser are gone, nothing left over
    assert r['seconds'][1] < 60


def test_tiny_reproduction_without_a_browser(tmp_path):
    "`mmvae reproduce --profile tiny` with no browser findable: exit 0, HTML figures, no PNG, the warning in the notebooks."
    env = no_browser_env(tmp_path)
    out = tmp_path/'run'
    t = time.perf_counter()
    r = subprocess.run([str(Path(sys.executable).parent/'mmvae'), 'reproduce', '--profile', 'tiny', '--out', str(out)],
                       env=env, capture_output=True, text=True, timeout=1800)
    print(f'tiny reproduction without a browser: {time.perf_counter() - t:.0f} s')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = out/'results'
    assert len(list(results.rglob('*.html'))) >= 10 and not list(results.rglob('*.png'))
    warned = {}
    for nb in sorted((out/'notebooks').glob('*.ipynb')):
        cells = json.loads(nb.read_text())['cells']
        if not any('save_figure(' in ''.join(c['source']) for c in cells if c['cell_type'] == 'code'): continue
        texts = [''.join(o.get('text', '')) for c in cells if c['cell_type'] == 'code' for o in c.get('outputs', [])]
        warned[nb.stem] = sum('PNG export is unavailable' in t and HINT in t for t in texts)
    assert {'02_easy_vae_pca', '03_medium_hybrid', '04_hard_variants'} <= set(warned)
    assert set(warned.values()) == {1}, warned  # each notebook that saves figures warns, once
