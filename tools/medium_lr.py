"""Compare learning rates for the medium task's VAEs on the validation loss (how `lr` in 03_medium_hybrid was chosen).

Trains the ConvVAE and the HybridVAE at each learning rate and seed with the notebook's jobs (`medium_jobs`, its
defaults, with the full profile's 150 epochs and early stopping) and prints each run's epochs and best validation
loss. No mood label is read. The models go to the run folder's model cache, so those a
`mmvae reproduce --profile full` run into the same folder trained already are loaded, not retrained.

    python tools/medium_lr.py --data ../shared/mirex-dev/dataset --out runs/real
    python tools/medium_lr.py --data W/data/demo-n_songs903-seconds30.0-seed0 --out W/run   # after python bench/reproduce.py --work W
"""
import argparse
from pathlib import Path

import pandas as pd

from mmvae.core import TrainConfig, train_parallel
from mmvae.features import load_study
from mmvae.hybrid import medium_inputs, medium_jobs


def main(argv=None):
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument('--data', default=None, help='dataset folder (default: the generated demo dataset)')
    a.add_argument('--out', default='runs/lr', help='run folder: its cache/ holds the features and the models')
    a.add_argument('--lrs', type=float, nargs='+', default=[1e-3, 2e-3])
    a.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    a.add_argument('--epochs', type=int, default=150)
    args = a.parse_args(argv)
    cache = Path(args.out)/'cache'
    _, data = medium_inputs(load_study(args.data, cache).feats, 'emb')
    jobs = {(name, seed, lr): job for lr in args.lrs  # the notebook's batch size; validation share and patience as TrainConfig's
            for (name, seed), job in medium_jobs(data, args.seeds, TrainConfig(epochs=args.epochs, batch_size=32, lr=lr)).items()}
    fitted = train_parallel(jobs, cache/'models')
    rows = [dict(model=name, seed=seed, lr=lr, epochs=len(h), best_val_loss=h['val_loss'].min()) for (name, seed, lr), (_, h) in fitted.items()]
    t = pd.DataFrame(rows).pivot(index=['model', 'seed'], columns='lr', values=['epochs', 'best_val_loss'])
    print(t.astype({c: int for c in t.columns if c[0] == 'epochs'}).round(1).to_string())


if __name__ == '__main__':
    main()
