"""Time the whole reproduction at the real dataset's size, cold and warm (not a test).

A generated dataset of the real size (903 songs × 30 s by default; its generation is timed
separately) is run through `mmvae reproduce` twice into the same folder: once cold (empty feature
store) and once warm (cache hit). The warm run is reported as a ratio of the cold run measured
here; for scale, the seed's own three scripts took about 10.5 minutes on this kind of machine
(one seed, features re-extracted by every task, no cache).

    python bench/reproduce.py                    # full profile, 903 × 30 s
    python bench/reproduce.py --songs 200 --seconds 10 --profile demo
"""
import argparse, shutil, tempfile, time
from pathlib import Path

from mmvae.analysis import reproduce
from mmvae.data import demo_dataset

SEED_SCRIPTS_SECONDS = 10.5 * 60  # the seed's scripts on the real data, for scale (not measured here)


def main():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument('--songs', type=int, default=903)
    a.add_argument('--seconds', type=float, default=30.0)
    a.add_argument('--profile', default='full')
    a.add_argument('--work', default=None, help='folder for the dataset and the run (default: a temp folder)')
    args = a.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix='mmvae-bench-'))
    t = time.perf_counter()
    data = demo_dataset(work/'data', n_songs=args.songs, seconds=args.seconds)
    gen = time.perf_counter() - t
    out = work/'run'
    shutil.rmtree(out, ignore_errors=True)
    times = {}
    for phase in ('cold', 'warm'):
        t = time.perf_counter()
        reproduce(args.profile, data=str(data), out=str(out))
        times[phase] = time.perf_counter() - t
    print(f"\ndataset: {args.songs} songs × {args.seconds:g} s generated in {gen:.0f} s ({data})")
    print(f"profile {args.profile}: cold {times['cold']:.0f} s, warm {times['warm']:.0f} s")
    print(f"warm / cold = {times['warm'] / times['cold']:.2f}")
    print(f"cold / seed scripts (10.5 min on the real data, quoted for scale, not measured here) = {times['cold'] / SEED_SCRIPTS_SECONDS:.2f}")
    if not args.work: shutil.rmtree(work)


if __name__ == '__main__':
    main()
