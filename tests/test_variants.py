"Tests of mmvae.variants: PoE posterior, masked loss, CVAE condition, VaDE assignments, small end-to-end fits."
import numpy as np
import pandas as pd
import pytest
import torch

from mmvae.core import embed, poe, standardize, train_model  # the shared product of experts and scaling the variants use
from mmvae.variants import (AE, BetaVAE, CVAE, TriModalVAE, VaDE, condition_labels, cross_modal_shift, fit_vade, hide,
                            modality_data, one_hot, vade_assign)


# --- product of experts -------------------------------------------------------------------------

def test_poe_one_expert_with_prior_is_analytic():
    "N(0,1) × N(m, s²) ∝ N(m / (1 + s²), s² / (1 + s²)), per latent dimension."
    m, s2 = torch.tensor([[1.5, -2.0, 0.0]]), torch.tensor([[0.25, 4.0, 1.0]])
    mu, logvar = poe(m[None], s2.log()[None], torch.ones(1, 1), prior=True)
    torch.testing.assert_close(mu, m / (1 + s2))
    torch.testing.assert_close(logvar.exp(), s2 / (1 + s2))


def test_poe_one_expert_without_prior_is_that_expert():
    m, lv = torch.randn(1, 5, 3), torch.randn(1, 5, 3)
    mu, logvar = poe(m, lv, torch.ones(5, 1), prior=False)
    torch.testing.assert_close(mu, m[0]); torch.testing.assert_close(logvar, lv[0])


def test_poe_ignores_absent_experts_whatever_their_output():
    m, lv = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    mask = torch.tensor([[1., 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1]])
    mu, logvar = poe(m, lv, mask)
    m2, lv2 = m.clone(), lv.clone()
    m2[1, [0, 2, 3]] = 100.; lv2[2, :3] = -5.  # change only absent experts
    mu2, logvar2 = poe(m2, lv2, mask)
    torch.testing.assert_close(mu, mu2); torch.testing.assert_close(logvar, logvar2)
    torch.testing.assert_close(mu[2], torch.zeros(2)); torch.testing.assert_close(logvar[2], torch.zeros(2))  # prior only
    with pytest.raises(ValueError, match='at least one modality'): poe(m, lv, mask, prior=False)


def test_poe_two_experts_precision_weighted():
    m, v = torch.tensor([[[1.0]], [[3.0]]]), torch.tensor([[[1.0]], [[0.5]]])
    mu, logvar = poe(m, v.log(), torch.ones(1, 2))
    prec = 1 + 1 / 1.0 + 1 / 0.5
    torch.testing.assert_close(logvar.exp(), torch.tensor([[1 / prec]]))
    torch.testing.assert_close(mu, torch.tensor([[(1.0 / 1.0 + 3.0 / 0.5) / prec]]))


# --- tri-modal loss over present modalities -----------------------------------------------------

def _tri(seed=0):
    torch.manual_seed(seed)
    return TriModalVAE({'audio': 6, 'lyrics': 10, 'midi': 4}, latent_dim=3, hidden=(8, 4))


def _xs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g) for m, d in (('audio', 6), ('lyrics', 10), ('midi', 4))}


@pytest.mark.parametrize('subsample', [True, False])
def test_absent_modality_gets_no_gradient(subsample):
    model = _tri(); model.subsample = subsample; model.train()
    mask = torch.tensor([[1., 1, 0], [1, 0, 0], [1, 1, 0]])  # MIDI absent everywhere
    model(mask=mask, **_xs(3)).loss.backward()
    for name, p in model.experts['midi'].named_parameters():  # its encoder (expert) and its decoder
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.experts['lyrics'].decoder.parameters())


def test_loss_does_not_depend_on_absent_inputs():
    model = _tri().eval()
    mask = torch.tensor([[1., 0, 1], [1, 1, 0]])
    xs = _xs(2); xs2 = {k: v.clone() for k, v in xs.items()}
    xs2['lyrics'][0] = 50.; xs2['midi'][1] = -50.  # garbage where the modality is absent
    with torch.no_grad():
        torch.testing.assert_close(model(mask=mask, **xs).loss, model(mask=mask, **xs2).loss)


def test_hide_and_cross_modal_shift():
    rng = np.random.default_rng(0)
    data = {'audio': rng.normal(size=(20, 6)).astype(np.float32), 'lyrics': rng.normal(size=(20, 10)).astype(np.float32),
            'midi': rng.normal(size=(20, 4)).astype(np.float32), 'mask': np.ones((20, 3), np.float32)}
    data['mask'][:5, 2] = 0
    h = hide(data, 'lyrics', ['audio', 'lyrics', 'midi'])
    assert h['mask'][:, 1].sum() == 0 and data['mask'][:, 1].sum() == 20  # a copy, original untouched
    r = cross_modal_shift(_tri(), data, 'midi')
    assert r['n_songs'] == 15 and r['spread'] > 0 and r['relative_shift'] >= 0


def test_modality_data_standardises_present_rows_only():
    class FS: pass
    fs = FS(); rng = np.random.default_rng(1)
    fs.audio, fs.lyrics_emb, fs.midi = rng.normal(5, 2, (30, 4)), rng.normal(size=(30, 3)), rng.normal(3, 1, (30, 2))
    fs.mask = {'audio': np.ones(30, bool), 'lyrics': rng.random(30) < .7, 'midi': rng.random(30) < .4}
    fs.midi[~fs.mask['midi']] = 0
    d = modality_data(fs, np.arange(30))
    assert d['mask'].dtype == np.float32 and d['mask'].shape == (30, 3)
    present = fs.mask['midi']
    np.testing.assert_allclose(d['midi'][present].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(d['midi'][present].std(0), 1, atol=1e-4)
    assert (d['midi'][~present] == 0).all()
    np.testing.assert_allclose(standardize(np.ones((4, 2))), 0)  # constant columns do not divide by zero


def test_tri_modal_trains_and_embeds_every_song():
    rng = np.random.default_rng(0)
    n = 40
    data = {'audio': rng.normal(size=(n, 6)).astype(np.float32), 'lyrics': rng.normal(size=(n, 10)).astype(np.float32),
            'midi': rng.normal(size=(n, 4)).astype(np.float32),
            'mask': np.stack([np.ones(n), rng.random(n) < .7, rng.random(n) < .3], 1).astype(np.float32)}
    model = _tri()
    hist = train_model(model, data, epochs=3, seed=0, progress=False)
    assert np.isfinite(hist['train_loss']).all()
    Z = embed(model, data)
    assert Z.shape == (n, 3) and np.isfinite(Z).all()


# --- CVAE condition never includes the mood --------------------------------------------------------

def _manifest():
    return pd.DataFrame({'id': ['001', '002', '003', '004', '005'], 'cluster': [1, 1, 2, 3, 5],
                         'category': ['Rowdy', 'Fiery', 'Sweet', 'Wry', 'Visceral'],
                         'genre': ['Rock, Pop', 'Jazz', None, 'Rock', ''],
                         'year': pd.array([1971, pd.NA, 1999, 1975, 2003], dtype='Int64')})


@pytest.mark.parametrize('col', ['cluster', 'category'])
def test_condition_refuses_mood_label(col):
    with pytest.raises(ValueError, match='mood label'): condition_labels(_manifest(), col)


def test_condition_genre_and_decade():
    m = _manifest()
    assert list(condition_labels(m)) == ['Rock', 'Jazz', 'unknown', 'Rock', 'unknown']
    assert condition_labels(m).name == 'genre'
    assert list(condition_labels(m, 'decade')) == ['1970s', 'unknown', '1990s', '1970s', '2000s']
    assert condition_labels(m.drop(columns='genre')).name == 'decade'  # no Genre column → decade
    with pytest.raises(ValueError, match="no genre column"): condition_labels(m.drop(columns='genre'), 'genre')


def test_encoded_condition_independent_of_cluster():
    m = _manifest()
    shuffled = m.assign(cluster=[5, 4, 3, 2, 1], category=['x'] * 5)
    for by in ('genre', 'decade'):
        a, na = one_hot(condition_labels(m, by)); b, nb = one_hot(condition_labels(shuffled, by))
        np.testing.assert_array_equal(a, b); assert na == nb
        assert not set(na) & ({str(c) for c in m['cluster']} | set(m['category']))


def test_cvae_shapes_and_condition_matters():
    torch.manual_seed(0)
    model = CVAE(6, 3, latent_dim=2, hidden=(8, 4)).eval()
    x = torch.randn(4, 6)
    c1, c2 = torch.eye(3)[[0, 0, 0, 0]], torch.eye(3)[[1, 1, 1, 1]]
    with torch.no_grad():
        out = model(x=x, c=c1)
        assert out.x_hat.shape == (4, 6) and out.mu.shape == (4, 2)
        assert not torch.allclose(model.decode(out.mu, c1), model.decode(out.mu, c2))


# --- VaDE ---------------------------------------------------------------------------------------

def test_vade_assignments_are_probabilities():
    torch.manual_seed(0)
    model = VaDE(6, latent_dim=2, hidden=(8, 4), k=4)
    model.init_gmm(np.random.default_rng(0).normal(size=(50, 2)))
    assert not model.pretrain
    g = vade_assign(model, np.random.default_rng(1).normal(size=(30, 6)) * 10)
    assert g.shape == (30, 4) and (g >= 0).all()
    np.testing.assert_allclose(g.sum(1), 1, atol=1e-5)


def test_vade_fit_end_to_end():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(m, .3, (15, 5)) for m in (-2, 0, 2)]).astype(np.float32)
    torch.manual_seed(0)
    model = VaDE(5, latent_dim=2, hidden=(8, 4), k=3)
    hist = fit_vade(model, {'x': X}, epochs=3, seed=0, progress=False)
    assert set(hist['phase']) == {'pretrain', 'vade'}
    pre, full = hist[hist.phase == 'pretrain'], hist[hist.phase == 'vade']
    assert full['epoch'].min() == pre['epoch'].max() + 1 and hist['epoch'].is_monotonic_increasing  # one epoch axis, no overlap
    assert hist.attrs['best_epoch'] in set(full['epoch'])  # the restored weights are the full-ELBO phase's
    g = vade_assign(model, X)
    assert np.isfinite(g).all() and np.allclose(g.sum(1), 1, atol=1e-5)


def test_vade_one_standard_component_equals_vae_kl():
    torch.manual_seed(0)
    model = VaDE(6, latent_dim=3, hidden=(8, 4), k=1).eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        model.mu_c.zero_(); model.logvar_c.zero_()
        kl_vae = model(x=x).logs['kl']; model.pretrain = False
        torch.testing.assert_close(model(x=x).logs['kl'], kl_vae, atol=1e-5, rtol=1e-5)


# --- AE / β-VAE ----------------------------------------------------------------------------------

def test_ae_is_deterministic_and_has_no_kl():
    torch.manual_seed(0)
    model = AE(6, latent_dim=2, hidden=(8, 4)).train()
    x = torch.randn(5, 6)
    a, b = model(x=x), model(x=x)
    torch.testing.assert_close(a.z, b.z)
    assert 'kl' not in a.logs
    torch.testing.assert_close(a.loss, a.logs['recon'])


def test_beta_vae_weights_kl():
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    m1 = BetaVAE(6, 2, (8, 4), beta=1.0); m4 = BetaVAE(6, 2, (8, 4), beta=4.0)
    m4.load_state_dict(m1.state_dict())
    torch.manual_seed(1); o1 = m1(x=x)
    torch.manual_seed(1); o4 = m4(x=x)
    torch.testing.assert_close(o4.loss - o1.loss, 3 * o1.logs['kl'])


def test_vade_fit_is_cached_as_one_entry(tmp_path, monkeypatch):
    "A second identical `fit_vade` with the model cache runs no epoch and gives the same model, history and assignments."
    import mmvae.core as core
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(m, .3, (15, 5)) for m in (-2, 0, 2)]).astype(np.float32)
    def fit():
        torch.manual_seed(0)
        model = VaDE(5, latent_dim=2, hidden=(8, 4), k=3)
        return model, fit_vade(model, {'x': X}, epochs=3, seed=0, progress=False, device='cpu', cache=tmp_path)
    m1, h1 = fit()
    assert len(list(tmp_path.glob('*.pt'))) == 1  # both phases: one entry
    monkeypatch.setattr(core, '_run_epoch', lambda *a, **k: pytest.fail('an epoch ran although the fit was cached'))
    m2, h2 = fit()
    pd.testing.assert_frame_equal(h2, h1)
    assert h2.attrs['best_epoch'] == h1.attrs['best_epoch'] and not m2.pretrain
    np.testing.assert_array_equal(vade_assign(m2, X), vade_assign(m1, X))
