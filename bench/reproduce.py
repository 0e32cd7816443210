#!/usr/bin/env python
"""Time the whole reproduction at the real dataset's size, cold and warm, against a baseline commit (not a test).

A generated dataset of the real size (903 songs × 30 s by default; generated once, its time reported apart) is run
through `mmvae reproduce` by each implementation: first the baseline commit (`--baseline`, checked out in a git
worktree), then this checkout. Each runs into its own run folder: cold (empty caches), warm (the same command again)
and, where the implementation has `--rerun`, warm with every notebook executed again (caches warm, nothing skipped).
Reported per phase: the wall time, each notebook's time (papermill's duration; "up to date" where it was skipped), the
slowest cells of the cold run, peak memory (the summed resident set of the whole process tree, sampled every 0.2 s
with psutil) and CPU time (user + system of every process of the run, sampled likewise; divided by the wall time, the number of
cores kept busy on average). The figures of this checkout are given as ratios of the baseline's, measured in the same run on the same data.
Each phase's `results/summary.csv` and `results/comparisons.csv` are compared with those of the first implementation's
cold run and with those of the same implementation's cold run: the same numbers, or the rows that differ (the numbers a
change of speed must leave alone; two runs of one implementation must agree).

    python bench/reproduce.py --baseline 0c9396c                 # full profile, 903 × 30 s
    python bench/reproduce.py --baseline HEAD~1 --songs 100 --seconds 10 --profile demo
"""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parent.parent


class TreeSampler:
    "Context manager sampling a process and all its descendants every `every` s: `.peak`, the largest summed RSS (bytes), and `.cpu`, the CPU seconds (user + system) they used."
    def __init__(self, proc, every=0.2): self.proc, self.every, self.peak, self._cpu = psutil.Process(proc.pid), every, 0, {}

    @property
    def cpu(self) -> float: return sum(self._cpu.values())  # a process's last moments between two samples are missed

    def _sample(self):
        while not self._stop.wait(self.every):
            try: procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error: continue
            total = 0
            for p in procs:
                try:
                    with p.oneshot():
                        total += p.memory_info().rss
                        t = p.cpu_times()
                        self._cpu[(p.pid, p.create_time())] = t.user + t.system
                except psutil.Error: pass
            self.peak = max(self.peak, total)

    def __enter__(self):
        self._stop = threading.Event(); self._t = threading.Thread(target=self._sample, daemon=True); self._t.start()
        return self

    def __exit__(self, *exc): self._stop.set(); self._t.join()


def notebook_times(run: Path, log: str, top: int = 3) -> dict:
    "name → (seconds or None where the log says it was up to date, [(seconds, first source line) of its `top` slowest cells])."
    out, skipped = {}, set(re.findall(r'\b(\d\d_\w+): up to date\b', log))
    for nb in sorted((run/'notebooks').glob('*.ipynb')):
        if nb.stem in skipped: out[nb.stem] = (None, []); continue
        d = json.loads(nb.read_text())
        cells = [(c['metadata'].get('papermill', {}).get('duration') or 0, ''.join(c['source'])) for c in d['cells'] if c['cell_type'] == 'code']
        first = lambda s: next((l for l in s.splitlines() if l.strip() and not l.startswith('#|')), '')[:70]
        out[nb.stem] = (d['metadata'].get('papermill', {}).get('duration') or 0, [(t, first(src)) for t, src in sorted(cells, key=lambda c: -c[0])[:top]])
    return out


NUMBERS = ('summary.csv', 'comparisons.csv')  # the study's results, in `results/`
ROW_LABELS = ['task', 'name', 'baseline', 'clusterer', 'metric']  # the columns that name a row (those of them a table has)


def changed_rows(table: pd.DataFrame, reference: pd.DataFrame) -> list:
    "Labels ('task / name / clusterer ...') of the rows of `table` that differ from `reference`'s, in either; [] when the two are equal."
    if table.equals(reference): return []
    key = [c for c in ROW_LABELS if c in table and c in reference]
    if not key: return ['the whole table']
    m = table.merge(reference, on=key, how='outer', suffixes=('', ' ref'), indicator=True)
    cols = [c for c in table if c not in key and f'{c} ref' in m]
    same = lambda c: (m[c] == m[f'{c} ref']) | (m[c].isna() & m[f'{c} ref'].isna())
    bad = (m['_merge'] != 'both') | ~pd.concat([same(c) for c in cols], axis=1).all(axis=1)
    return [' / '.join(map(str, r)) for r in m.loc[bad, key].itertuples(index=False)]


def run_phase(checkout: Path, python: str, args, data: Path, out: Path, phase: str, extra=()) -> dict:
    "One `mmvae reproduce` of `checkout` (its package first on the path): wall seconds, peak memory, per-notebook times."
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [python, '-c', 'import sys; from mmvae.analysis import main; sys.exit(main())', 'reproduce',
           '--profile', args.profile, '--data', str(data), '--out', str(out), *extra]
    log = out.parent/f'{out.name}.{phase}.log'
    t = time.perf_counter()
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, env=env, cwd=checkout, stdout=f, stderr=subprocess.STDOUT)
        with TreeSampler(proc) as tree: rc = proc.wait()
    seconds = time.perf_counter() - t
    if rc: sys.exit(f"bench: {checkout} failed (exit {rc}); see {log}")
    for f in NUMBERS:  # this phase's results, kept beside its log
        if (out/'results'/f).is_file(): shutil.copy(out/'results'/f, out.parent/f'{out.name}.{phase}.{f}')
    return dict(seconds=seconds, cpu=tree.cpu, peak=tree.peak, notebooks=notebook_times(out, log.read_text(errors='replace')))


def run_folder(work: Path, name: str) -> Path:
    "The run folder of the implementation `name` in `work`."
    return work/('run-' + name.replace(' ', '-').replace('/', '_'))


def compare_numbers(work: Path, results: dict, names: list):
    "Store in `results` the rows of each phase's results that differ from the first implementation's cold run (`changed_rows`) and from the same implementation's cold run (`changed_rows_own`)."
    kept = lambda n, phase: f"{run_folder(work, n)}.{LOG_NAME[phase]}"  # as `run_phase` keeps them
    def rows(got, ref):
        return {f: changed_rows(pd.read_csv(f'{got}.{f}'), pd.read_csv(f'{ref}.{f}'))
                if Path(f'{ref}.{f}').is_file() and Path(f'{got}.{f}').is_file() else ['(file missing)'] for f in NUMBERS}
    for n in names:
        for phase, r in results[n].items():
            if (n, phase) != (names[0], 'cold'): r['changed_rows'] = rows(kept(n, phase), kept(names[0], 'cold'))
            if phase != 'cold': r['changed_rows_own'] = rows(kept(n, phase), kept(n, 'cold'))


def numbers_report(results: dict, names: list) -> str:
    say = lambda changed: '; '.join(f"{f} " + ('identical' if not rows else f"{len(rows)} rows differ: {', '.join(rows[:6])}"
                                               + (' ...' if len(rows) > 6 else '')) for f, rows in changed.items())
    lines = []
    for key, title in (('changed_rows', f"same numbers as {names[0]}, cold"), ('changed_rows_own', "same numbers as the same implementation's cold run")):
        got = [(n, phase, r[key]) for n in names for phase, r in results[n].items() if key in r]
        if got: lines += [f"\n{title} ({', '.join(NUMBERS)}):"] + [f"  {n}, {phase}: {say(c)}" for n, phase, c in got]
    return '\n'.join(lines)


def has_rerun(checkout: Path) -> bool:
    return "'--rerun'" in (checkout/'mmvae'/'analysis.py').read_text()


def checkout_of(rev: str, work: Path) -> Path:
    "A git worktree of `rev` in `work` (made once; the project's notebooks and package at that commit)."
    tree = work/f'baseline-{rev.replace("/", "_")}'
    if not tree.exists(): subprocess.run(['git', '-C', str(REPO), 'worktree', 'add', '--detach', str(tree), rev], check=True)
    return tree


PHASES = ('cold', 'warm', 'warm, --rerun')
LOG_NAME = dict(zip(PHASES, ('cold', 'warm', 'rerun')))  # phase → the name of its log and kept results


def report(results: dict, names: list) -> str:
    lines, w = [], max(16, *(len(n) + 2 for n in names))
    fmt = lambda v, f: 'up to date' if v is None else '-' if v != v else f(v)
    for phase in PHASES:
        got = [n for n in names if phase in results[n]]
        if not got: continue
        lines += [f"\n{phase}:", f"{'':24}" + ''.join(f"{n:>{w}}" for n in got) + (f"{'ratio':>9}" if len(got) > 1 else '')]
        def row(label, vals, f):
            ratio = f"{vals[-1] / vals[0]:9.2f}" if len(got) > 1 and all(isinstance(v, float) and v > 0 for v in (vals[0], vals[-1])) else ''
            lines.append(f"{label:24}" + ''.join(f"{fmt(v, f):>{w}}" for v in vals) + ratio)
        row('whole run (s)', [results[n][phase]['seconds'] for n in got], lambda v: f"{v:.0f}")
        for nb in results[got[0]][phase]['notebooks']:
            row(f"  {nb} (s)", [results[n][phase]['notebooks'].get(nb, (float('nan'), []))[0] for n in got], lambda v: f"{v:.0f}")
        row('peak memory (GB)', [results[n][phase]['peak'] / 1e9 for n in got], lambda v: f"{v:.2f}")
        if all('cpu' in results[n][phase] for n in got):
            row('CPU time (s)', [results[n][phase]['cpu'] for n in got], lambda v: f"{v:.0f}")
            row('cores busy (CPU / wall)', [results[n][phase]['cpu'] / results[n][phase]['seconds'] for n in got], lambda v: f"{v:.2f}")
    if len(names) > 1 and PHASES[2] in results[names[-1]] and PHASES[2] not in results[names[0]]:
        ex = results[names[-1]][PHASES[2]]['seconds'] / results[names[0]]['warm']['seconds']
        lines.append(f"\nevery notebook executed on warm caches: {names[-1]}'s '{PHASES[2]}' / {names[0]}'s 'warm' = {ex:.2f}")
    lines.append("\nslowest cells (cold):")
    for n in names:
        for nb, (_, cells) in results[n]['cold']['notebooks'].items():
            lines.append(f"  {n} {nb}: " + '; '.join(f"{t:.0f} s {src!r}" for t, src in cells))
    return '\n'.join(lines)


def markdown(results: dict, names: list) -> str:
    "The README's Speed table: the whole run and each notebook, cold and warm, the first implementation (the baseline) beside the last."
    base, new = names[0], names[-1]
    cols = [(n, p) for n, p in ((base, 'cold'), (new, 'cold'), (base, 'warm'), (new, 'warm'), (new, PHASES[2])) if p in results[n]]
    cols = list(dict.fromkeys(cols))
    label = lambda n, p: f"{'baseline' if n == base and len(names) > 1 else 'this commit'}, {p}"
    def dur(v):
        if v is None: return 'up to date'
        m, s = divmod(round(v), 60)
        return f"{m} min {s:02d} s" if m else f"{s} s"
    head = ['', *(label(n, p) for n, p in cols)] + (['cold: this / baseline'] if len(names) > 1 else [])
    rows = [['whole run', *(dur(results[n][p]['seconds']) for n, p in cols)]]
    rows += [[nb, *(dur(results[n][p]['notebooks'].get(nb, (float('nan'), []))[0]) for n, p in cols)] for nb in results[base]['cold']['notebooks']]
    rows += [['peak memory (process tree)', *(f"{results[n][p]['peak'] / 1e9:.1f} GB" for n, p in cols)]]
    if all('cpu' in results[n][p] for n, p in cols):
        rows += [['CPU time (all processes)', *(dur(results[n][p]['cpu']) for n, p in cols)],
                 ['cores busy (CPU / wall)', *(f"{results[n][p]['cpu'] / results[n][p]['seconds']:.2f}" for n, p in cols)]]
    if len(names) > 1:
        ratios = [results[new]['cold']['seconds'] / results[base]['cold']['seconds']]
        ratios += [results[new]['cold']['notebooks'][nb][0] / results[base]['cold']['notebooks'][nb][0] for nb in results[base]['cold']['notebooks']]
        ratios += [results[new]['cold']['peak'] / results[base]['cold']['peak']]
        if all('cpu' in results[n][p] for n, p in cols): ratios += [results[new]['cold']['cpu'] / results[base]['cold']['cpu']]
        for r, q in zip(rows, ratios): r.append(f"{q:.2f}")
        for r in rows[len(ratios):]: r.append('')
    return '\n'.join('| ' + ' | '.join(r) + ' |' for r in [head, ['---'] * len(head), *rows])


def main():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument('--songs', type=int, default=903)
    a.add_argument('--seconds', type=float, default=30.0)
    a.add_argument('--profile', default='full')
    a.add_argument('--baseline', help='git revision to measure first, in the same run (e.g. the commit before a change)')
    a.add_argument('--work', default=None, help='folder for the dataset, worktrees and runs (default: a temp folder, removed after)')
    a.add_argument('--json', help='also write the figures to this JSON file')
    a.add_argument('--from-json', help='print the report and Markdown table of an earlier run from its --json file, without running')
    args = a.parse_args()
    if args.from_json:
        d = json.loads(Path(args.from_json).read_text())
        print(report(d['results'], list(d['results'])), numbers_report(d['results'], list(d['results'])), '\n',
              markdown(d['results'], list(d['results'])), sep='\n')
        return
    work = Path(args.work or tempfile.mkdtemp(prefix='mmvae-bench-')).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from mmvae.data import demo_dataset
    t = time.perf_counter()
    data = demo_dataset(work/'data', n_songs=args.songs, seconds=args.seconds)
    gen = time.perf_counter() - t
    impls = ([(f'baseline {args.baseline}', checkout_of(args.baseline, work))] if args.baseline else []) + [('this checkout', REPO)]
    results = {}
    for name, checkout in impls:
        out = run_folder(work, name)
        shutil.rmtree(out, ignore_errors=True)
        results[name] = {phase: run_phase(checkout, sys.executable, args, data, out, LOG_NAME[phase]) for phase in PHASES[:2]}
        if has_rerun(checkout): results[name][PHASES[2]] = run_phase(checkout, sys.executable, args, data, out, LOG_NAME[PHASES[2]], ['--rerun'])
        print(f"{name}: cold {results[name]['cold']['seconds']:.0f} s, warm {results[name]['warm']['seconds']:.0f} s", flush=True)
    names = [n for n, _ in impls]
    print(f"\ndataset: {args.songs} songs × {args.seconds:g} s generated in {gen:.0f} s; profile {args.profile}; "
          f"{os.cpu_count()} cores; ratio = this checkout / baseline")
    print(report(results, names))
    compare_numbers(work, results, names)
    print(numbers_report(results, names))
    print('\n' + markdown(results, names))
    if args.json: Path(args.json).write_text(json.dumps(dict(songs=args.songs, seconds=args.seconds, profile=args.profile,
                                                             cores=os.cpu_count(), results=results), indent=1))
    if args.baseline: subprocess.run(['git', '-C', str(REPO), 'worktree', 'remove', '--force', str(impls[0][1])], check=False)
    if not args.work: shutil.rmtree(work)


if __name__ == '__main__':
    main()
