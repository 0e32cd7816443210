"""Compare learning rates for the medium task's VAEs on the validation loss (how `lr` in 03_medium_hybrid was chosen).

Trains the ConvVAE and the HybridVAE at each learning rate and seed with the notebook's settings
(its defaults, with the full profile's 150 epochs and early stopping) and prints each run's epochs and best
validation loss. No mood label is read. The models go to the run folder's model cache, so those a
`mmvae reproduce --profile full` run into the same folder trained already are loaded, not retrained.

    python tools/medium_lr.py --data ../shared/mirex-dev/dataset --out runs/real
    python tools/medium_lr.py --data W/data/demo-n_songs903-seconds30.0-seed0 --out W/run   # after python bench/reproduce.py --work W
"""
import argparse
from pathlib import Path

import pandas as pd

from mmvae.core import seed_everything, train_model, train_parallel
from mmvae.data import clip_seconds, load_manifest, resolve_data_dir
from mmvae.features import FeatureConfig, build_features
from mmvae.hybrid import ConvVAE, HybridVAE, medium_inputs

a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
a.add_argument('--data', default=None, help='dataset folder (default: the generated demo dataset)')
a.add_argument('--out', default='runs/lr', help='run folder: its cache/ holds the features and the models')
a.add_argument('--lrs', type=float, nargs='+', default=[1e-3, 2e-3])
a.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
a.add_argument('--epochs', type=int, default=150)
args = a.parse_args()

cache = Path(args.out)/'cache'
root = resolve_data_dir(args.data, cache)
feats = build_features(load_manifest(root), cache_dir=cache, config=FeatureConfig(duration=clip_seconds(root)))
_, data = medium_inputs(feats, 'emb')
model_kw = dict(shape=data['mel'].shape[1:], latent_dim=8, channels=(8, 16, 32), beta=1.0)  # the notebook's defaults
vaes = {'conv_vae': (lambda: ConvVAE(**model_kw), {'mel': data['mel']}),
        'hybrid_vae': (lambda: HybridVAE(lyrics_dim=data['lyrics'].shape[1], hidden=(128,), **model_kw), data)}


def fit(name, seed, lr):
    "Train (or load) one VAE; its history."
    make, inputs = vaes[name]
    seed_everything(seed)
    return train_model(make(), inputs, epochs=args.epochs, batch_size=32, lr=lr, val_frac=0.15, patience=10,
                       seed=seed, progress=False, cache=cache/'models')


if __name__ == '__main__':
    jobs = [(name, seed, lr) for name in vaes for lr in args.lrs for seed in args.seeds]
    hists = train_parallel(fit, jobs)
    rows = [dict(model=name, seed=seed, lr=lr, epochs=len(h), best_val_loss=h['val_loss'].min())
            for (name, seed, lr), h in hists.items()]
    t = pd.DataFrame(rows).pivot(index=['model', 'seed'], columns='lr', values=['epochs', 'best_val_loss'])
    print(t.astype({c: int for c in t.columns if c[0] == 'epochs'}).round(1).to_string())
