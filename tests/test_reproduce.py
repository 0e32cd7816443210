"""`mmvae reproduce` end to end on a tiny demo profile (the result contract of every task, the study table, the explorer);
failing, timed-out and dead notebooks; interrupts; unwritable run folders; broken datasets for `mmvae summary`; the
explorer's widgets and `tools/results_md.py` on synthetic results; and the docs preview in Chromium."""
import json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from conftest import TOP
from mmvae.analysis import NOTEBOOKS, ReproduceError, compare_study, explorer, main, notebooks_dir, reproduce, tree_state
from mmvae.core import COMPARISON_COLUMNS, MAIN_CLUSTERER, TASK_DIRS, baseline_pairs, cluster_runs, latent_files, read_assignments, read_latent, read_runs, slug, summarize_runs, write_results

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
STUDY_KEYS = ['task', 'representation', 'name', 'clusterer']  # the study table's groups (05)
MMVAE = Path(sys.executable).parent/'mmvae'
PLANTED = ('pretty_midi', 'mmvae', 'ipykernel_launcher')  # modules a kernel imports; copies of them are planted in --out


def _planted(name) -> str:
    return f"open({name!r} + '.SHADOWED', 'w').close()\nraise ImportError('the planted {name}.py in the run folder was imported')\n"


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "A whole reproduction with the tiny profile, through the console script, into a run folder holding planted modules."
    out = tmp_path_factory.mktemp('run')
    for name in PLANTED: (out/f'{name}.py').write_text(_planted(name))
    r = subprocess.run([str(MMVAE), 'reproduce', '--profile', 'tiny', '--out', str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout, r.stderr


def test_cli_runs_every_notebook(tiny_run):
    out, stdout, stderr = tiny_run
    assert sorted(p.stem for p in (out/'notebooks').glob('*.ipynb')) == list(NOTEBOOKS)
    assert 'Results (mean ± std over seeds' in stdout and '★' in stdout and 'Dataset' in stdout
    params = json.loads((out/'profile.json').read_text())
    assert params['profile'] == 'tiny' and params['seeds'] == [0]
    checks = lambda p: sum('check' in c['metadata'].get('tags', []) for c in json.loads(p.read_text())['cells'])
    assert sum(map(checks, notebooks_dir().glob('0*.ipynb'))) >= 3 and sum(map(checks, (out/'notebooks').glob('*.ipynb'))) == 0
    assert set(re.findall(r'\b(\d\d_\w+): \d+ s\b', stdout)) == set(NOTEBOOKS)  # a timing line per notebook
    assert 'without encryption' not in stdout + stderr  # kernels talk over IPC, not TCP


def test_same_command_again_is_up_to_date(tiny_run):
    "The same command again executes no notebook and leaves results and executed copies untouched; --rerun executes them; a changed result file makes all run."
    out, _, _ = tiny_run
    again = lambda *extra: subprocess.run([str(MMVAE), 'reproduce', '--profile', 'tiny', '--out', str(out), *extra], capture_output=True, text=True)
    before = tree_state(out/'results', out/'notebooks')
    r = again()
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert set(re.findall(r'\b(\d\d_\w+): up to date\b', r.stdout)) == set(NOTEBOOKS) and not re.search(r'\d\d_\w+: \d+ s\b', r.stdout)
    assert tree_state(out/'results', out/'notebooks') == before and '★' in r.stdout  # the study table is printed all the same
    r = again('--only', '05', '--rerun')
    assert r.returncode == 0 and re.search(r'\b05_analysis: \d+ s\b', r.stdout), r.stdout[-3000:] + r.stderr[-3000:]
    assert 'up to date' not in r.stdout
    r = again('--only', '00', '05')
    assert set(re.findall(r'\b(\d\d_\w+): up to date\b', r.stdout)) == {'00_data', '05_analysis'}, r.stdout[-3000:]
    manifest = out/'results'/'data'/'manifest.csv'
    manifest.write_text(manifest.read_text() + '\n')  # a result changed by hand: nothing can be trusted to be up to date
    r = again('--only', '00')
    assert r.returncode == 0 and re.search(r'\b00_data: \d+ s\b', r.stdout), r.stdout[-3000:] + r.stderr[-3000:]
    assert '00_data: up to date' in again('--only', '00').stdout  # recorded again


def test_every_task_writes_the_result_contract(tiny_run):
    "Each task's runs, assignments and latents are read back through mmvae.core; 05's study table covers every task, its comparisons every baseline."
    out, _, _ = tiny_run
    res = out/'results'
    runs = read_runs(res)
    assert set(runs['task']) == set(TASK_DIRS) and (runs['representation'] == runs['name'].map(slug)).all()
    assert (runs.groupby(['task', 'representation'])['name'].nunique() == 1).all()
    for task, a in read_assignments(res).groupby('task'):  # every run's predicted clusters
        r = runs[runs['task'] == task]
        assert set(a.groupby(['representation', 'clusterer', 'seed']).groups) == set(zip(r['representation'], r['clusterer'], r['seed'])), task
    assert {t for t, _ in latent_files(res)} == set(TASK_DIRS)
    assert {(t, r) for t, r in latent_files(res)} <= set(zip(runs['task'], runs['representation']))
    assert (res/'summary.csv').read_text() == summarize_runs(runs, STUDY_KEYS).to_csv(index=False)  # 05's table, from the runs alone
    comparisons = pd.read_csv(res/'comparisons.csv', dtype={'representation': str, 'baseline': str})
    assert list(comparisons) == list(COMPARISON_COLUMNS)
    pairs = baseline_pairs(runs[runs['clusterer'] == MAIN_CLUSTERER])  # every representation that names a baseline is compared with it, under the main clusterer
    assert set(zip(comparisons['task'], comparisons['representation'], comparisons['baseline'], comparisons['clusterer'])) == set(pairs.itertuples(index=False, name=None))


def test_explorer_offers_every_saved_space(tiny_run):
    "The explorer on a run: every latent space the tasks saved, under the display name of its runs."
    from mmvae.data import load_manifest
    out, _, _ = tiny_run
    manifest = load_manifest(json.loads((out/'profile.json').read_text())['data_dir'])
    space = explorer(out/'results', manifest, cache=out/'cache'/'maps').children[0].children[0]
    runs = read_runs(out/'results')
    names = dict(zip(zip(runs['task'], runs['representation']), runs['name']))
    assert list(space.options) == [(f'{t}: {names[t, r]}', (t, r)) for t, r in latent_files(out/'results')]
    assert len(space.options) >= 10 and ('hard: tri-modal VAE', ('hard', 'tri_modal_vae')) in space.options


def test_explorer_opens_coloured_by_mood(tiny_run):
    "As a user opens it, untouched: the first space, coloured by mood, one legend entry (trace of one colour) per mood; a cluster listed with its count."
    from mmvae.data import MOOD_NAMES, load_manifest, mood_name
    out, _, _ = tiny_run
    manifest = load_manifest(json.loads((out/'profile.json').read_text())['data_dir'])
    box = explorer(out/'results', manifest, cache=out/'cache'/'maps')
    (space, by), fig, (group, members) = box.children[0].children, box.children[1], box.children[2].children[1].children
    assert space.value == space.options[0][1] and (by.value, by.label) == ('mood', 'true mood')
    ids, mood = read_latent(latent_files(out/'results')[space.value])[0], manifest.set_index('id')['cluster']
    moods = sorted(set(mood.loc[ids]))
    assert [t.name for t in fig.data] == [mood_name(k) for k in moods] and all(k in MOOD_NAMES for k in moods)
    assert all(isinstance(t.marker.color, str) and t.showlegend is not False for t in fig.data) and fig.layout.showlegend is not False
    assert len({t.marker.color for t in fig.data}) == len(moods) and fig.layout.legend.title.text == 'true mood'
    assert sorted(i for t in fig.data for i in t.customdata) == sorted(ids)  # every song of the space, once
    assert all((mood.loc[list(t.customdata)] == k).all() for t, k in zip(fig.data, moods))  # each trace holds its mood's songs
    n = len(fig.data[0].customdata)
    assert group.label == mood_name(moods[0]) and members.value.startswith(f'<b>{min(20, n)} of {n} songs</b>')
    by.value = 'kmeans'
    assert by.label == 'kmeans clusters (named by matched mood)' and all(isinstance(t.marker.color, str) for t in fig.data)
    assert {t.name for t in fig.data} <= {mood_name(k) for k in moods} | {f'unmatched cluster {k}' for k in range(6, 20)}


def test_run_folder_cannot_shadow_imports(tiny_run):
    "The run succeeded (a planted module raises on import) and left the planted files as they were."
    out, _, _ = tiny_run
    assert sorted(p.name for p in out.glob('*.SHADOWED')) == []
    for name in PLANTED: assert (out/f'{name}.py').read_text() == _planted(name)


def _notebooks_with_cell(tmp_path, name, position, source) -> Path:
    "A copy of the notebooks in which notebook `name` runs `source` at cell `position`."
    nbs = tmp_path/'nbs'
    nbs.mkdir(parents=True)
    for n in NOTEBOOKS: shutil.copy(notebooks_dir()/f'{n}.ipynb', nbs)
    nb = json.loads((nbs/f'{name}.ipynb').read_text())
    nb['cells'].insert(position, {'cell_type': 'code', 'id': 'inserted', 'metadata': {}, 'outputs': [], 'execution_count': None,
                                  'source': source})
    (nbs/f'{name}.ipynb').write_text(json.dumps(nb))
    return nbs


@pytest.mark.parametrize('name, position, only, concurrent, never', [
    ('01_features', 2, ['00', '01', '02'], 3, '02_easy_vae_pca'),  # a failure ends the run before the next stage
    ('02_easy_vae_pca', 1, ['02', '03'], 1, '03_medium_hybrid'),  # ... and the queue of its own stage (tasks one at a time)
])
def test_failing_notebook_stops_the_run(tmp_path, name, position, only, concurrent, never):
    nbs = _notebooks_with_cell(tmp_path, name, position, f'raise RuntimeError("{name} exploded")')
    with pytest.raises(ReproduceError, match=f'notebook {name} failed: RuntimeError: {name} exploded'):
        reproduce('tiny', out=tmp_path/'run', nbs=nbs, only=only, concurrent=concurrent)
    assert (tmp_path/'run'/'notebooks'/f'{name}.ipynb').is_file() and not (tmp_path/'run'/'notebooks'/f'{never}.ipynb').exists()


def test_cell_timeout_and_dead_kernel(tmp_path):
    "A cell that outlasts the cell timeout, and a kernel that dies, each stop the run naming the notebook, the cell and the executed copy."
    nbs = _notebooks_with_cell(tmp_path/'slow', '00_data', 4, 'import time\ntime.sleep(600)')
    copy = tmp_path/'run'/'notebooks'/'00_data.ipynb'
    with pytest.raises(ReproduceError, match=r'notebook 00_data: cell \d+ \(`import time`\) ran longer than the cell timeout of 3 s') as e:
        reproduce('tiny', out=tmp_path/'run', nbs=nbs, only=['00'], cell_timeout=3)
    assert f'executed copy: {copy}' in str(e.value) and copy.is_file()
    nbs = _notebooks_with_cell(tmp_path/'dead', '00_data', 4, 'import os, signal\nos.kill(os.getpid(), signal.SIGKILL)')
    with pytest.raises(ReproduceError, match=r'notebook 00_data: its kernel died \(killed by SIGKILL: usually the out-of-memory killer') as e:
        reproduce('tiny', out=tmp_path/'run', nbs=nbs, only=['00'])
    assert re.search(r'in cell \d+ \(`import os, signal`\)', str(e.value)) and f'executed copy: {copy}' in str(e.value)


class _Tree:
    "Every descendant of a process seen while polling, and the kernels' connection files."
    def __init__(self, pid): self.root, self.seen, self.connection_files = psutil.Process(pid), set(), set()
    def poll(self):
        try: kids = self.root.children(recursive=True)
        except psutil.Error: return
        self.seen.update(kids)
        for k in kids:
            try: cmd = k.cmdline()
            except psutil.Error: continue
            if '-f' in cmd and 'ipykernel_launcher' in ' '.join(cmd): self.connection_files.add(Path(cmd[cmd.index('-f') + 1]))
    def alive(self) -> list:
        def up(p):
            try: return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            except psutil.Error: return False
        return [p for p in self.seen if up(p)]
    def kernel_workers(self) -> list:
        "The live loky workers started by a kernel."
        def match(p):
            try: return 'loky.backend.popen_loky_posix' in ' '.join(p.cmdline()) and 'ipykernel_launcher' in ' '.join(p.parent().cmdline())
            except (psutil.Error, AttributeError): return False
        return [p for p in self.alive() if match(p)]


def _wait_for_kernel_workers(tree, proc, timeout=300):
    "Poll until a kernel's loky workers are at work (bounded; fails if the run ends first)."
    end, cpu = time.monotonic() + timeout, {}
    while time.monotonic() < end:
        tree.poll()
        for w in tree.kernel_workers():
            try: used = sum(w.cpu_times()[:2])
            except psutil.Error: continue
            if w in cpu and used > cpu[w] + .1: return  # busy, not just started
            cpu[w] = used
        assert proc.poll() is None, f'the run ended (code {proc.returncode}) before a kernel started loky workers'
        time.sleep(.5)
    pytest.fail(f'no busy loky worker of a kernel within {timeout} s')


def _ctrl_c_as_in_a_terminal():
    "SIGINT as a terminal delivers it: a test suite started in the background (where shells ignore SIGINT) must not pass that on."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_during_training_stops_everything(tiny_run, tmp_path):
    "Ctrl-C (SIGINT) while the hard task trains its models in loky workers: the run ends within 10 s with code 130 and the resume hint, leaving no process and no connection file."
    out = tmp_path/'run'
    shutil.copytree(tiny_run[0]/'cache', out/'cache')  # demo and features warm; new seeds and epochs: 04 trains at once
    log = (tmp_path/'stdout').open('w'), (tmp_path/'stderr').open('w')
    p = subprocess.Popen([str(MMVAE), 'reproduce', '--profile', 'tiny', '--epochs', '3000', '--seeds', '5', '6', '7', '--only', '04', '--out', str(out)],
                         stdout=log[0], stderr=log[1], start_new_session=True,
                         preexec_fn=_ctrl_c_as_in_a_terminal)
    tree = _Tree(p.pid)
    try:
        _wait_for_kernel_workers(tree, p)  # 04's training pool at work
        time.sleep(1); tree.poll()
        assert tree.connection_files and len(tree.seen) >= 4  # runner, kernel, two workers (and loky's resource tracker)
        os.kill(p.pid, signal.SIGINT)
        start = time.monotonic()
        rc = p.wait(timeout=60)
        seconds = time.monotonic() - start
    finally:
        if p.poll() is None: p.kill()
    left = tree.alive()
    for q in left: q.kill()
    stderr = (tmp_path/'stderr').read_text()
    print(f'interrupted run stopped in {seconds:.1f} s')
    assert seconds < 10 and rc == 130, (seconds, rc, stderr[-2000:])
    assert left == [], [q.cmdline() for q in left]
    assert [f for f in tree.connection_files if f.exists() or f.parent.exists()] == []
    lines = [l for l in stderr.splitlines() if l.startswith('mmvae:')]
    assert len(lines) == 1 and 'to resume, run the same command again' in lines[0] and 'Traceback' not in stderr, stderr[-2000:]


def test_killed_mmvae_leaves_no_process(tmp_path):
    "After SIGKILL of the process running `reproduce`, its runner ends the kernel and the kernel's loky workers within seconds."
    out = tmp_path/'run'
    nbs = _notebooks_with_cell(tmp_path, '00_data', 4, 'from joblib import Parallel, delayed\n'
                               'Parallel(n_jobs=2)(delayed(sum)(range(10 ** 12)) for _ in range(2))')  # two busy workers
    code = f'from mmvae.analysis import reproduce; reproduce("tiny", out={str(out)!r}, nbs={str(nbs)!r}, only=["00"])'
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tree = _Tree(p.pid)
    try:
        _wait_for_kernel_workers(tree, p)
        time.sleep(1); tree.poll()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        end = time.monotonic() + 10
        while tree.alive() and time.monotonic() < end: time.sleep(.1)
        left = tree.alive()
    finally:
        for q in tree.alive(): q.kill()
    assert left == [], [q.cmdline() for q in left]
    assert tree.connection_files and [f for f in tree.connection_files if f.exists()] == []


def test_unwritable_run_folder(tmp_path, capsys):
    "--out that is a file, or a read-only folder (or one inside it): one `mmvae:` line naming the folder and why, exit 1."
    f = tmp_path/'a file'
    f.write_text('x')
    assert main(['reproduce', '--profile', 'tiny', '--out', str(f)]) == 1
    assert capsys.readouterr().err == f"mmvae: cannot write the run folder {f}: it is a file, not a folder\n"
    ro = tmp_path/'read-only'
    ro.mkdir()
    if os.geteuid() == 0:  # root writes through chmod: make a real read-only folder, a bind mount in a private mount namespace
        wrap = ['unshare', '-m', '--propagation', 'private', 'sh', '-c',
                'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"', 'sh', str(ro)]
        if not shutil.which('unshare') or subprocess.run([*wrap, 'true']).returncode: pytest.skip('cannot make a read-only folder as root here')
        reason = 'Read-only file system'
    else: wrap, reason = [], 'Permission denied'; ro.chmod(0o555)
    for target in (ro, ro/'run'):
        r = subprocess.run([*wrap, str(MMVAE), 'reproduce', '--profile', 'tiny', '--out', str(target)], capture_output=True, text=True)
        assert (r.returncode, r.stderr) == (1, f"mmvae: cannot write the run folder {target}: {reason}\n"), r.stderr[-2000:]
    assert list(ro.iterdir()) == []


def test_summary_of_broken_datasets(tmp_path, capsys):
    "`mmvae summary` on damaged datasets: the counts where the damage can be skipped, else one `mmvae:` line naming it; never a traceback."
    from mmvae.data import demo_dataset
    demo = demo_dataset(tmp_path/'cache', n_songs=10, seconds=1.0)
    def broken(name, damage):
        d = tmp_path/name
        shutil.copytree(demo, d, symlinks=True)
        damage(d)
        return d
    garbage = np.random.default_rng(0).bytes(300)
    cases = {  # case → (dataset, exit code, what stderr names when it fails)
        'missing folder': (tmp_path/'nowhere', 1, 'nowhere'),
        'empty folder': (broken('empty', lambda d: [shutil.rmtree(d), d.mkdir()]), 1, 'does not look like the MIREX emotion dataset'),
        'dangling symlink': (broken('symlink', lambda d: (d/'Audio'/'999.mp3').symlink_to(d/'gone.mp3')), 0, None),
        'clusters.txt a folder': (broken('folder', lambda d: [(d/'clusters.txt').unlink(), (d/'clusters.txt').mkdir()]), 1, 'clusters.txt'),
        'clusters.txt binary': (broken('binary', lambda d: (d/'clusters.txt').write_bytes(garbage)), 1, 'clusters.txt, line 1'),
        'info csv binary': (broken('info', lambda d: (d/'dataset info.csv').write_bytes(b'\xff\xfe\x00\xd8' + garbage)), 0, None),
    }
    capsys.readouterr()
    for case, (d, code, named) in cases.items():
        rc = main(['summary', '--data', str(d)])
        out, err = capsys.readouterr()
        assert rc == code and 'Traceback' not in out + err, (case, rc, err)
        if code == 0: assert 'skipped_audio' in out and out.splitlines()[-1].split()[0] == 'total', (case, out)
        else: assert err.startswith('mmvae: ') and err.count('\n') == 1 and named in err, (case, err)


@pytest.fixture(scope='module')
def synthetic_results(tmp_path_factory):
    "12 demo songs and two tasks' results written through the result contract (random latents, no training)."
    from mmvae.data import demo_dataset, load_manifest
    tmp = tmp_path_factory.mktemp('synthetic')
    manifest = load_manifest(demo_dataset(tmp/'cache', n_songs=12, seconds=1.0))
    ids, y, rng = manifest['id'], manifest['cluster'], np.random.default_rng(0)
    for task, names in {'easy': ['PCA', 'VAE'], 'hard': ['PCA', 'tri-modal VAE']}.items():
        runs, assigned, latents = [], [], {}
        for name in names:
            Z = rng.normal(size=(len(ids), 3))
            for seed in (0, 1):
                rows, a = cluster_runs(Z, y, ids, seed, methods=('kmeans', 'gmm'), task=task, name=name, baseline='' if name == 'PCA' else 'PCA',
                                       probe_f1=.2 + seed / 10)
                runs += rows; assigned.append(a)
            latents[slug(name)] = (ids, Z)
        write_results(tmp/'results', task, runs, pd.concat(assigned, ignore_index=True), latents)
    summarize_runs(read_runs(tmp/'results'), STUDY_KEYS).to_csv(tmp/'results'/'summary.csv', index=False)  # as 05 writes it
    compare_study(tmp/'results', manifest.set_index('id')['cluster'])  # comparisons.csv, as 05 writes it
    return tmp/'results', manifest


def test_explorer(synthetic_results, tmp_path):
    "The explorer's widgets: it opens on the first space coloured by mood (one legend entry per mood); a clusterer's first seed, its clusters named by matched mood; click a song, list a cluster."
    from html import escape
    from plotly.callbacks import Points
    from mmvae.analysis import legend_name
    from mmvae.core import align_labels
    from mmvae.data import mood_name
    results, manifest = synthetic_results
    box = explorer(results, manifest, cache=tmp_path/'maps')
    (space, by), fig, (left, right) = box.children[0].children, box.children[1], box.children[2].children
    (card, player), (group, members) = left.children, right.children
    mood = manifest.set_index('id')['cluster']
    assert [label for label, _ in space.options] == ['easy: PCA', 'easy: VAE', 'hard: PCA', 'hard: tri-modal VAE']
    assert (space.label, by.value, by.label, fig.layout.legend.title.text) == ('easy: PCA', 'mood', 'true mood', 'true mood')  # as it opens
    assert [t.name for t in fig.data] == [mood_name(k) for k in sorted(set(mood))]  # categorical: one trace per mood
    assert all(isinstance(t.marker.color, str) for t in fig.data) and len({t.marker.color for t in fig.data}) == len(fig.data)
    assert all(set(mood.loc[list(t.customdata)]) == {k} for t, k in zip(fig.data, sorted(set(mood))))
    assert group.value == sorted(set(mood))[0] and members.value.startswith(f'<b>{len(fig.data[0].x)} of {len(fig.data[0].x)} songs</b>')
    space.value = ('hard', 'tri_modal_vae')
    assert by.options == (('true mood', 'mood'), ('kmeans clusters (named by matched mood)', 'kmeans'), ('gmm clusters (named by matched mood)', 'gmm'))
    by.value = 'gmm'
    a = read_assignments(results).query("task == 'hard' and representation == 'tri_modal_vae' and clusterer == 'gmm' and seed == 0").set_index('id')['label']
    named = pd.Series(align_labels(mood.to_numpy(), a.reindex(mood.index).to_numpy()), index=mood.index)
    assert {t.name: sorted(t.customdata) for t in fig.data} == {legend_name(v): sorted(g.index) for v, g in named.groupby(named)}
    trace = fig.data[0]
    trace._dispatch_on_click(Points(point_inds=[0], xs=[trace.x[0]], ys=[trace.y[0]], trace_name=trace.name, trace_index=0), None)
    song = manifest.set_index('id', drop=False).loc[trace.customdata[0]]
    assert f"<b>{escape(song['title'])}</b>" in card.value and f"predicted cluster {trace.name}" in card.value
    assert player.value == Path(song['audio_path']).read_bytes()  # its clip, ready to play
    group.value = group.options[-1][1]
    n = len(fig.data[-1].x)
    assert members.value.startswith(f'<b>{min(20, n)} of {n} songs</b>') and members.value.count('<br>') == min(20, n)


def test_results_md(synthetic_results):
    "tools/results_md.py: the README's table (one row per task and representation, K-Means, mean ± std, the chance level beside each metric), then the corrected comparisons."
    results, _ = synthetic_results
    r = subprocess.run([sys.executable, str(TOP/'tools'/'results_md.py'), str(results)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    table, rest = lines[:lines.index('')], lines[lines.index('') + 1:]
    assert table[:2] == ['| task | representation | ACC | ACC chance | NMI | NMI chance | AMI | AMI chance | ARI | ARI chance | probe macro-F1 |',
                         '|' + '---|' * 11]
    assert [l.split(' | ')[:2] for l in table[2:]] == [['| easy', 'PCA'], ['| easy', 'VAE'], ['| hard', 'PCA'], ['| hard', 'tri-modal VAE']]
    s = pd.read_csv(results/'summary.csv').query("clusterer == 'kmeans'")
    assert table[2].split(' | ')[2:4] == [f"{s['acc_mean'].iloc[0]:.3f} ± {s['acc_std'].iloc[0]:.3f}",
                                          f"{s['acc_null_mean'].iloc[0]:.3f} (95th {s['acc_null95_mean'].iloc[0]:.3f})"]
    assert all(l.split(' | ')[10] == '0.250 ± 0.071 |' for l in table[2:])  # the probe of seeds 0 and 1: 0.2, 0.3
    c = pd.read_csv(results/'comparisons.csv')
    assert len(c) == 2 * 1 * 3 and rest[0].startswith('6 comparisons (2 representation × clusterer pairs × 3 metrics: NMI, AMI, ACC) form one family')  # K-Means only
    assert rest[-len(c) - 2].startswith('| task | representation | baseline | clusterer | metric |') and len(rest[-len(c):]) == len(c)


@pytest.mark.skipif(CHROMIUM is None, reason='chromium not installed')
def test_docs_preview_in_browser(tiny_run, tmp_path):
    "Every preview page loads offline with a title and navigation, shows no directive or attribute residue and no raw LaTeX, draws every figure within the column, and logs no error."
    from playwright.sync_api import sync_playwright
    out, _, _ = tiny_run
    site = tmp_path/'site'
    r = subprocess.run([sys.executable, str(TOP/'tools'/'preview_docs.py'), str(out/'notebooks'), '--out', str(site)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    pages = sorted(site.glob('*.html'))
    assert {p.stem for p in pages} == {'index', *NOTEBOOKS}
    assert (site/'plotly.min.js').is_file() and not any('* plotly.js v' in p.read_text() for p in pages)  # plotly.js once per site
    external = []
    flags = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
             '--disable-sync', '--no-first-run']
    math_done = "() => !window.MathJax || !MathJax.Hub || (MathJax.Hub.queue.pending === 0 && MathJax.Hub.queue.running === 0)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        for page_file in pages:
            page, errors, missing = browser.new_page(viewport={'width': 1290, 'height': 900}), [], []
            page.route(re.compile(r'^https?://'), lambda route: (external.append(route.request.url), route.abort()))
            # MathJax 2 probes font loading with a blank font at about:blank, which Chromium reports as a CORS error;
            # a file that fails to load is reported by its address (below), so the console's address-less line is left out
            # (MathJax also probes for TeX fonts installed with it, which the bundled copy leaves out: it then uses STIX-Web)
            page.on('requestfailed', lambda r: missing.append(r.url) if r.url.startswith('file:') and '/fonts/HTML-CSS/TeX/' not in r.url else None)
            page.on('console', lambda m: errors.append(m.text) if m.type == 'error' and 'about:blank' not in m.text
                    and not m.text.startswith('Failed to load resource') else None)
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.goto(page_file.as_uri(), wait_until='load')
            page.wait_for_function(math_done, timeout=30_000)
            page.wait_for_timeout(300)
            name = page_file.name
            assert page.title().endswith('– mmvae') and page.locator('h1').count() >= 1, name
            assert page.locator('nav.mmvae-nav a').count() == len(pages), name
            text = page.inner_text('body')
            if page_file.stem[:2] in ('02', '03', '04', '05'):  # a task page and the analysis open with their computed findings
                assert page.locator('h2').first.inner_text().strip().rstrip('¶').strip() == 'Findings', f'{name}: the first section is not the Findings'
                assert page.locator('details').count() >= 1, f'{name}: no folded table'
            for residue in ('#|', '{target=', 'source{', ':::'):
                assert residue not in text, f'{name}: {residue!r} shows on the page'
            assert not re.search(r'\$[^$\n]{1,200}\$', text), f'{name}: raw LaTeX {re.search(r"[$][^$]{1,60}", text)[0]!r}'
            divs = page.locator('.plotly-graph-div').count()
            drawn = page.locator('.plotly-graph-div:has(.main-svg)').count()
            assert drawn == divs, f'{name}: {divs - drawn} of {divs} plotly figures did not draw'
            column = page.evaluate("document.querySelector('.jp-Cell-outputArea, .jp-OutputArea').getBoundingClientRect().width") if divs else 0
            wide = page.evaluate("[...document.querySelectorAll('.plotly-graph-div')].map(d => Math.round(d.getBoundingClientRect().width))")
            assert all(w <= column + 1 for w in wide), f'{name}: figures wider than the column ({column:.0f} px): {sorted(set(wide))[-3:]}'
            assert not errors and not missing, f'{name}: console errors {errors[:3]}, files not found {missing[:3]}'
            page.close()
        browser.close()
    assert any(page_file.read_text().count('plotly-graph-div') for page_file in pages)  # figures were there to check
    assert not external, f'the pages asked the network for {sorted(set(external))[:3]}'
