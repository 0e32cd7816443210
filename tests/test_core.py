"""mmvae.core: VAE building blocks and training, clustering and metrics, figures."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmvae.core import (MLPVAE, ModelOutput, VAEEmbedder, embed, gaussian_kl, mlp, reparameterize, seed_everything,
                        train_model)


@pytest.fixture(scope='module')
def X():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(120, 3)) @ rng.normal(size=(3, 15)) + 0.1 * rng.normal(size=(120, 15))).astype(np.float32)


# --- VAE building blocks -------------------------------------------------------------------------------------------

def test_gaussian_kl_hand_computed():
    mu, logvar = torch.tensor([[1., 0.], [0., 0.]]), torch.tensor([[0., np.log(2.)], [0., 0.]], dtype=torch.float32)
    # row 0: ½(1 + 0 - 0) + ½(0 + 2 - 1 - log 2); row 1: standard normal → 0
    expected = torch.tensor([0.5 + 0.5 * (1 - np.log(2.)), 0.])
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected.float())


def test_reparameterize_moments_and_gradient():
    torch.manual_seed(0)
    mu = torch.full((50000, 1), -1., requires_grad=True)
    z = reparameterize(mu, torch.full((50000, 1), np.log(9.)))
    assert abs(z.mean().item() + 1) < 0.05 and abs(z.std().item() - 3) < 0.05
    z.sum().backward()
    assert torch.all(mu.grad == 1)


def test_mlp_layers():
    m = mlp((6, 5, 4), dropout=0.2)
    assert [type(l).__name__ for l in m] == ['Linear', 'LayerNorm', 'GELU', 'Dropout'] * 2
    assert m(torch.randn(3, 6)).shape == (3, 4)


def test_mlpvae_loss_is_beta_weighted_elbo():
    torch.manual_seed(0)
    vae = MLPVAE(7, latent_dim=2, hidden=(8,), beta=3.)
    x = torch.randn(4, 7)
    out = vae(x)
    assert isinstance(out, ModelOutput)
    recon = 0.5 * (x - out.x_hat).pow(2).sum(-1)  # summed over features
    torch.testing.assert_close(out.logs['recon'], recon.mean())  # averaged over the batch
    torch.testing.assert_close(out.loss, (recon + 3 * gaussian_kl(out.mu, out.logvar)).mean())


def _fit(X, seed, **kw):
    seed_everything(seed)
    m = MLPVAE(X.shape[1], latent_dim=2, hidden=(16,))
    return m, train_model(m, {'x': X}, epochs=8, seed=seed, progress=False, **kw)


def test_training_is_deterministic_on_cpu(X):
    m1, h1 = _fit(X, 1, device='cpu')
    m2, h2 = _fit(X, 1, device='cpu')
    pd.testing.assert_frame_equal(h1, h2)
    np.testing.assert_array_equal(embed(m1, {'x': X}), embed(m2, {'x': X}))
    _, h3 = _fit(X, 2, device='cpu')
    assert not np.array_equal(h1.values, h3.values)


def test_history_and_best_restore(X, tmp_path):
    m, h = _fit(X, 0, lr=0.05, patience=2, checkpoint=tmp_path/'best.pt')
    assert list(h.columns[:3]) == ['epoch', 'train_loss', 'val_loss']
    assert {'train_recon', 'train_kl', 'val_recon', 'val_kl'} <= set(h.columns)
    best = h.attrs['best_epoch']
    assert h.loc[h.epoch == best, 'val_loss'].item() == h['val_loss'].min()
    # the restored weights are the checkpointed best ones
    saved = torch.load(tmp_path/'best.pt', weights_only=True)
    for k, v in m.state_dict().items(): torch.testing.assert_close(v, saved[k])
    # and the validation loss is that of the best epoch, up to the sampling noise of the VAE
    assert len(h) <= best + 2


class _MaskedMean(torch.nn.Module):
    "A non-VAE model with two inputs, to check that train_model is generic."
    def __init__(self):
        super().__init__(); self.w = torch.nn.Parameter(torch.zeros(3))
    def forward(self, x, m):
        err = ((x - self.w).pow(2) * m[:, None]).sum(-1).mean()
        return ModelOutput(loss=err, logs=dict(err=err))
    def encode(self, x, m):
        return x - self.w, torch.zeros_like(x)


def test_train_model_is_generic():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=2., size=(200, 3)).astype(np.float32)
    m = np.ones(200, dtype=np.float32)
    model = _MaskedMean()
    h = train_model(model, {'x': x, 'm': m}, epochs=60, lr=0.1, seed=0, progress=False, val_frac=0)
    assert 'train_err' in h and h['val_loss'].isna().all()
    np.testing.assert_allclose(model.w.detach().numpy(), x.mean(0), atol=0.15)
    assert embed(model, {'x': x, 'm': m}).shape == (200, 3)


def test_embedder_in_pipeline(X):
    pipe = make_pipeline(StandardScaler(), VAEEmbedder(latent_dim=3, hidden=(16,), epochs=5, random_state=4))
    Z = pipe.fit_transform(X)
    assert Z.shape == (len(X), 3) and Z.dtype == np.float32
    np.testing.assert_array_equal(clone(pipe).fit(X).transform(X), Z)
    np.testing.assert_array_equal(pipe.transform(X), Z)
    assert pipe[-1].history_['epoch'].iloc[0] == 1
    assert list(pipe.get_feature_names_out()) == ['z0', 'z1', 'z2']
    # interchangeable with PCA
    assert make_pipeline(StandardScaler(), PCA(3)).fit_transform(X).shape == Z.shape


def test_embedder_errors(X):
    with pytest.raises(ValueError, match='not fitted'): VAEEmbedder().transform(X)
    e = VAEEmbedder(latent_dim=2, hidden=(8,), epochs=1).fit(X)
    with pytest.raises(ValueError, match='expected 15 features'): e.transform(X[:, :4])
