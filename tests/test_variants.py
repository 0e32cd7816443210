"Tests of mmvae.variants: the models on the VAE base, masks and robustness, VaDE's procedure, the hard task's jobs, run and results."
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mmvae.core as core
from mmvae.core import (MAIN_CLUSTERER, compare_to_baselines, RUN_KEYS, VAE, MLPVAE, ModelCache, TrainConfig, TrainJob, embed, gaussian_kl, hungarian_accuracy, mlp, read_runs,
                        seed_everything, seeded, slug, train_model)
from mmvae.variants import (AE, CVAE, OWN_PRIOR, cluster_use, composition_figure, mixture_sentence, robustness_sentences, HardInputs, MoPoE, TriModalVAE, VaDE, balanced_concat, baseline_name, best_gmm,
                            block_names, condition_labels, cross_modal_shift, fit_vade, hard_baselines, hard_jobs, hard_table, hard_findings,
                            hide, modality_data, modality_patterns, modality_subsets, one_hot, pattern_scores, pattern_summary, pattern_table,
                            robustness_summary, run_hard, vade_assign, write_hard)

DIMS = {'audio': 6, 'lyrics': 10, 'midi': 4}


# --- tri-modal VAE: the loss over present modalities -------------------------------------------------

def _tri(seed=0, **kw):
    with seeded(seed): return TriModalVAE(DIMS, latent_dim=3, hidden=(8, 4), **kw)


def _batch(n, lyrics, midi, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()} | {
        'lyrics_mask': torch.tensor(lyrics, dtype=torch.bool), 'midi_mask': torch.tensor(midi, dtype=torch.bool)}


@pytest.mark.parametrize('subsample', [True, False])
def test_absent_modality_gets_no_gradient(subsample):
    model = _tri(subsample=subsample).train()
    model(**_batch(3, [1, 0, 1], [0, 0, 0])).loss.backward()  # MIDI absent everywhere
    for name, p in model.experts['midi'].named_parameters():  # its encoder (expert) and its decoder
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.experts['lyrics'].decoder.parameters())


def test_loss_does_not_depend_on_absent_inputs():
    model = _tri().eval()
    b = _batch(2, [0, 1], [1, 0]); b2 = {k: v.clone() for k, v in b.items()}
    b2['lyrics'][0] = 50.; b2['midi'][1] = -50.  # garbage where the modality is absent
    with torch.no_grad(): torch.testing.assert_close(model(**b).loss, model(**b2).loss)


def test_float_and_bool_masks_agree():
    model, b = _tri().eval(), _batch(4, [1, 0, 1, 0], [0, 0, 1, 1])
    f = b | {k: v.float() for k, v in b.items() if k.endswith('_mask')}
    with torch.no_grad(): torch.testing.assert_close(model(**b).loss, model(**f).loss, rtol=0, atol=0)


def test_tri_modal_eval_is_the_base_elbo_and_training_adds_single_modality_terms():
    "In evaluation (or without subsampling) forward is VAE.forward; in training the MVAE terms add to it."
    model, b = _tri(), _batch(5, [1, 1, 0, 1, 0], [1, 0, 0, 1, 1])
    with torch.no_grad():
        model.eval(); assert float(model(**b).loss) == float(VAE.forward(model, **b).loss)
        model.train(); model.subsample = False
        with seeded(1): plain = float(model(**b).loss)
        with seeded(1): assert plain == float(VAE.forward(model, **b).loss)
        model.subsample = True
        with seeded(1): assert float(model(**b).loss) > plain


def test_tri_modal_weights_rule_and_override():
    assert _tri().weights == {'audio': 1.0, 'lyrics': 0.6, 'midi': 1.5}
    assert _tri(weights={'audio': 1, 'lyrics': 1, 'midi': 1}).weights == {'audio': 1, 'lyrics': 1, 'midi': 1}


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return {m: rng.normal(size=(n, d)).astype(np.float32) for m, d in DIMS.items()} | {
        'lyrics_mask': rng.random(n) < .7, 'midi_mask': rng.random(n) < .4}


def test_hide_and_cross_modal_shift():
    data = _data(20)
    h = hide(data, 'lyrics')
    assert not h['lyrics_mask'].any() and data['lyrics_mask'].sum() > 0  # a copy, original untouched
    model, has = _tri(), data['midi_mask']
    r = cross_modal_shift(model, data, 'midi')
    assert r['n_songs'] == has.sum() and r['relative_shift'] > 0
    full, hidden = embed(model, data), embed(model, hide(data, 'midi'))
    np.testing.assert_array_equal(full[~has], hidden[~has])  # songs without MIDI do not move
    np.testing.assert_allclose(r['shift'], np.linalg.norm(full[has] - hidden[has], axis=1).mean(), rtol=1e-6)
    audio = cross_modal_shift(model, data, 'audio')  # no mask: every song has it
    assert audio['n_songs'] == 20 and audio['shift'] > 0
    assert np.isnan(cross_modal_shift(model, h, 'lyrics')['relative_shift'])  # nobody has lyrics: nothing to measure


class _FS:
    def __init__(self, n=30, seed=1):
        rng = np.random.default_rng(seed)
        self.audio, self.lyrics_emb, self.midi = rng.normal(5, 2, (n, 4)), rng.normal(size=(n, 3)), rng.normal(3, 1, (n, 2))
        self.mask = {'audio': np.ones(n, bool), 'lyrics': rng.random(n) < .7, 'midi': rng.random(n) < .4}
        self.midi[~self.mask['midi']] = 0


def test_modality_data_standardises_present_rows_only():
    fs = _FS()
    d = modality_data(fs, np.arange(30))
    assert list(d) == ['audio', 'lyrics', 'midi', 'lyrics_mask', 'midi_mask'] and d['midi_mask'].dtype == bool
    present = fs.mask['midi']
    np.testing.assert_array_equal(d['midi_mask'], present)
    np.testing.assert_allclose(d['midi'][present].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(d['midi'][present].std(0), 1, atol=1e-4)
    assert (d['midi'][~present] == 0).all()
    sub = modality_data(fs, present)  # boolean rows select like indices
    np.testing.assert_array_equal(sub['lyrics_mask'], fs.mask['lyrics'][present])


def test_modality_data_needs_the_reference_modality_everywhere():
    fs = _FS(); fs.mask['audio'][:3] = False
    with pytest.raises(ValueError, match='3 of the rows lack audio, the reference modality'): modality_data(fs, np.arange(30))
    assert len(modality_data(fs, np.arange(3, 30))['audio']) == 27


def test_tri_modal_trains_and_embeds_every_song():
    data, model = _data(), _tri()
    hist = train_model(model, data, TrainConfig(epochs=3), seed=0, device='cpu', progress=False)
    assert len(hist) == 3 and np.isfinite(hist[['train_loss', 'val_loss']]).all().all()
    Z = embed(model, data)
    assert Z.shape == (40, 3) and np.isfinite(Z).all()


# --- MoPoE: mixture of products of experts over the subsets of the present modalities ------------------

def _mopoe(seed=0, **kw):
    with seeded(seed): return MoPoE(DIMS, latent_dim=3, hidden=(8, 4), **kw)


def test_modality_subsets():
    s = modality_subsets(3)
    assert s.shape == (7, 3) and s.dtype == torch.bool and len({tuple(r.tolist()) for r in s}) == 7 and s.any(1).all()


def test_mopoe_subsets_are_those_of_the_present_modalities():
    has = _mopoe().subset_posteriors(**_batch(4, [1, 0, 1, 0], [1, 1, 0, 0]))[2]
    assert has.sum(1).tolist() == [7, 3, 3, 1]  # all three; audio+midi; audio+lyrics; audio alone
    assert has[:, 0].all()  # the audio expert alone is every song's subset


@pytest.mark.parametrize('training', [True, False])
def test_mopoe_absent_modality_gets_no_gradient(training):
    model = _mopoe().train(training)
    model(**_batch(3, [1, 0, 1], [0, 0, 0])).loss.backward()  # MIDI absent everywhere
    for name, p in model.experts['midi'].named_parameters():  # its encoder (expert) and its decoder
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    for part in ('encoder', 'decoder'):
        assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in getattr(model.experts['lyrics'], part).parameters())


def test_mopoe_absent_rows_give_no_gradient():
    "One song lacks lyrics: its lyrics input, whatever it holds, sends no gradient anywhere, and the loss ignores it."
    model, b = _mopoe().eval(), _batch(3, [1, 0, 1], [1, 1, 1])
    b['lyrics'] = b['lyrics'].clone().requires_grad_(True)
    model(**b).loss.backward()
    assert torch.count_nonzero(b['lyrics'].grad[1]) == 0 and torch.count_nonzero(b['lyrics'].grad[0]) > 0


def test_mopoe_code_ignores_the_batch_and_absent_inputs():
    model, b = _mopoe().eval(), _batch(9, [1, 0, 1, 1, 0, 0, 1, 0, 1], [1, 0, 0, 1, 1, 0, 0, 0, 1])
    with torch.no_grad():
        code = model.encode(**b)[0]
        alone = torch.cat([model.encode(**{k: v[i:i + 1] for k, v in b.items()})[0] for i in range(9)])
        torch.testing.assert_close(alone, code, rtol=0, atol=1e-6)  # a batch of one
        perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(model.encode(**{k: v[perm] for k, v in b.items()})[0], code[perm], rtol=0, atol=1e-6)  # shuffled
        garbage = b | {'lyrics': torch.where(b['lyrics_mask'][:, None], b['lyrics'], torch.full_like(b['lyrics'], 1e6)),
                       'midi': torch.where(b['midi_mask'][:, None], b['midi'], torch.full_like(b['midi'], float('nan')))}
        assert torch.equal(model.encode(**garbage)[0], code)  # absent inputs never reach a network
        assert torch.equal(model(**garbage).loss, model(**b).loss)
    data = {k: v.numpy() for k, v in b.items()}
    np.testing.assert_allclose(embed(model, data, batch_size=4), code.numpy(), rtol=0, atol=1e-6)


def test_mopoe_code_is_the_mixture_mean():
    "The code is the average of the song's subset means; with audio alone it is the audio expert times the prior (the tri-modal VAE's code)."
    model, b = _mopoe().eval(), _batch(4, [1, 0, 1, 0], [1, 0, 0, 1])
    with torch.no_grad():
        mus, logvars, has = model.subset_posteriors(**b)
        mu, logvar = model.encode(**b)
        for i in range(4):
            torch.testing.assert_close(mu[i], mus[has[i], i].mean(0))
            var = (logvars[has[i], i].exp() + mus[has[i], i] ** 2).mean(0) - mu[i] ** 2
            torch.testing.assert_close(logvar[i].exp(), var)
        tri = _tri().eval()  # the same seed: the same experts
        only_audio = b | {'lyrics_mask': torch.zeros(4, dtype=torch.bool), 'midi_mask': torch.zeros(4, dtype=torch.bool)}
        torch.testing.assert_close(model.encode(**only_audio)[0], tri.encode(**only_audio)[0])


def test_mopoe_elbo_samples_one_subset_and_evaluates_the_expectation():
    model, b = _mopoe(), _batch(5, [1, 1, 0, 1, 0], [1, 0, 0, 1, 1])
    with torch.no_grad():
        model.eval()
        mus, logvars, has = model.subset_posteriors(**b)
        w = has / has.sum(1, keepdim=True)
        per = torch.stack([model.recon(model.decode(m), **b)[0] + gaussian_kl(m, lv) for m, lv in zip(mus, logvars)], 1)
        torch.testing.assert_close(model(**b).loss, (w * per).sum(1).mean())  # evaluation: the expectation over each song's subsets
        assert float(model(**b).loss) == float(model(**b).loss)  # deterministic
        model.train()
        with seeded(1): a = float(model(**b).loss)
        with seeded(1): assert float(model(**b).loss) == a  # training draws: reproducible under a seed
        with seeded(2): assert float(model(**b).loss) != a


def test_mopoe_song_without_modalities_is_the_prior():
    model = _mopoe().eval()
    b = _batch(2, [0, 0], [0, 0]) | {'audio_mask': torch.tensor([False, True])}
    with torch.no_grad(): mu, logvar = model.encode(**b)
    torch.testing.assert_close(mu[0], torch.zeros(3)); torch.testing.assert_close(logvar[0], torch.zeros(3), atol=1e-6, rtol=0)


def test_mopoe_trains_and_embeds_every_song():
    data, model = _data(), _mopoe()
    hist = train_model(model, data, TrainConfig(epochs=3), seed=0, device='cpu', progress=False)
    assert len(hist) == 3 and np.isfinite(hist[['train_loss', 'val_loss']]).all().all()
    assert embed(model, data).shape == (40, 3)


def test_modality_patterns():
    d = _data(6)
    d['lyrics_mask'][:] = [1, 1, 0, 0, 1, 0]; d['midi_mask'][:] = [1, 0, 1, 0, 0, 0]
    assert list(modality_patterns(d)) == ['audio+lyrics+midi', 'audio+lyrics', 'audio+midi', 'audio', 'audio+lyrics', 'audio']


# --- CVAE: the condition never includes the mood ----------------------------------------------------

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
    with pytest.raises(ValueError, match="unknown condition 'mood'"): condition_labels(m, 'mood')


def test_encoded_condition_independent_of_cluster():
    m = _manifest()
    shuffled = m.assign(cluster=[5, 4, 3, 2, 1], category=['x'] * 5)
    for by in ('genre', 'decade'):
        a, na = one_hot(condition_labels(m, by)); b, nb = one_hot(condition_labels(shuffled, by))
        np.testing.assert_array_equal(a, b); assert na == nb
        assert not set(na) & ({str(c) for c in m['cluster']} | set(m['category']))


def test_one_hot_merges_rare_labels():
    codes, names = one_hot(['a', 'b', 'a', 'c'], min_count=2)
    assert names == ['a', 'other']
    np.testing.assert_array_equal(codes.argmax(1), [0, 1, 0, 1])


def test_cvae_shapes_and_condition_matters():
    with seeded(0): model = CVAE(6, 3, latent_dim=2, hidden=(8, 4))
    model.eval()
    x = torch.randn(4, 6)
    c1, c2 = torch.eye(3)[[0, 0, 0, 0]], torch.eye(3)[[1, 1, 1, 1]]
    with torch.no_grad():
        out = model(x=x, c=c1)
        assert out.x_hat.shape == (4, 6) and out.mu.shape == (4, 2)
        assert not torch.allclose(model.decode(out.mu, c1), model.decode(out.mu, c2))
        assert not torch.allclose(model.encode(x=x, c=c1)[0], model.encode(x=x, c=c2)[0])


def test_cvae_initial_weights_are_those_of_the_mlpvae_layout():
    "One seed draws the same weights as the former MLPVAE(cond_dim=...): encoder, heads, decoder, in that order."
    with seeded(3): model = CVAE(6, 3, latent_dim=2, hidden=(8, 4))
    ref = nn.Module()
    with seeded(3):
        ref.encoder = mlp((9, 8, 4))
        ref.mu_head, ref.logvar_head = nn.Linear(4, 2), nn.Linear(4, 2)
        ref.decoder = nn.Sequential(mlp((5, 4, 8)), nn.Linear(8, 6))
    a, b = model.state_dict(), ref.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# --- AE / β-VAE ------------------------------------------------------------------------------------

def test_ae_is_deterministic_and_has_no_kl():
    with seeded(0): model = AE(6, latent_dim=2, hidden=(8, 4))
    model.train()
    x = torch.randn(5, 6)
    a, b = model(x=x), model(x=x)  # in training mode: no sampling
    torch.testing.assert_close(a.z, b.z); torch.testing.assert_close(a.z, a.mu)
    assert float(a.logs['kl']) == 0. and float(a.loss.detach()) == float(a.logs['recon'])
    a.loss.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.logvar_head.parameters())  # the variance is unused


def test_beta_vae_jobs_are_mlpvaes_named_by_beta():
    jobs = hard_jobs(_inputs(), seeds=[0], betas=[0.5, 4.0], latent_dim=2, hidden=(8, 4))
    beta = {name: job for (name, _), job in jobs.items() if name.startswith('β')}
    assert list(beta) == ['β-VAE (β=0.5)', 'β-VAE (β=4)'] and [slug(n) for n in beta] == ['beta_vae_beta_0_5', 'beta_vae_beta_4']
    assert all(j.model is MLPVAE for j in beta.values()) and [j.build().beta for j in beta.values()] == [0.5, 4.0]


# --- VaDE --------------------------------------------------------------------------------------------

def _blobs3():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(m, .3, (15, 5)) for m in (-2, 0, 2)]).astype(np.float32)


def test_vade_assignments_are_a_distribution_and_batch_free():
    with seeded(0): model = VaDE(6, latent_dim=2, hidden=(8, 4), k=4)
    model.init_gmm(np.random.default_rng(0).normal(size=(50, 2)))
    X = np.random.default_rng(1).normal(size=(30, 6)) * 10
    g = vade_assign(model, X)
    assert g.shape == (30, 4)
    np.testing.assert_allclose(g.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(vade_assign(model, X, batch_size=7), g, atol=1e-6)


def test_vade_pretrains_as_a_deterministic_autoencoder():
    with seeded(0): model = VaDE(6, latent_dim=2, hidden=(8, 4), k=3)
    model.train()
    x = torch.randn(5, 6)
    a, b = model(x=x), model(x=x)
    torch.testing.assert_close(a.z, a.mu); torch.testing.assert_close(a.loss, b.loss)  # no sampling, in training too
    assert float(a.logs['kl']) == 0. and float(a.loss.detach()) == float(a.logs['recon'])
    model.gmm_ready.fill_(True)
    with seeded(0): c = model(x=x)
    assert not torch.equal(c.z, c.mu) and float(c.logs['kl']) > 0  # with the mixture: the VAE's sampling and the mixture KL


def test_vade_pi_is_fixed_and_uniform():
    model = VaDE(5, latent_dim=2, hidden=(8, 4), k=4)
    assert 'pi_logits' not in dict(model.named_parameters()) and 'pi_logits' in model.state_dict()
    model.init_gmm(np.concatenate([np.random.default_rng(0).normal(c, .1, (c * 10 + 5, 2)) for c in range(4)]))  # unbalanced data
    torch.testing.assert_close(torch.softmax(model.pi_logits, 0), torch.full((4,), .25))
    job = TrainJob(VaDE, dict(in_dim=5, latent_dim=2, hidden=(8, 4), k=3), {'x': _blobs3()}, seed=0, config=TrainConfig(epochs=2), procedure=fit_vade)
    trained, _ = job.run(device='cpu')
    torch.testing.assert_close(torch.softmax(trained.pi_logits, 0), torch.full((3,), 1 / 3))  # training leaves π alone


def test_best_gmm_keeps_the_most_likely_fit():
    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(c, .3, (25, 2)) for c in ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2))])
    gm = best_gmm(Z, 5, n_init=6, random_state=3)
    assert len(gm.loglik_) == 6 and np.isclose(gm.score(Z), max(gm.loglik_))
    from sklearn.mixture import GaussianMixture
    singles = [GaussianMixture(5, covariance_type='diag', random_state=3 + i, reg_covar=1e-4).fit(Z).score(Z) for i in range(6)]
    np.testing.assert_allclose(gm.loglik_, singles)  # the fits are seeds random_state, random_state + 1, ...
    model = VaDE(5, latent_dim=2, hidden=(8, 4), k=5, gmm_inits=6).init_gmm(Z, random_state=3)
    np.testing.assert_allclose(model.mu_c.detach().numpy(), gm.means_, rtol=1e-6)


def test_vade_one_standard_component_equals_vae_kl():
    with seeded(0): model = VaDE(6, latent_dim=3, hidden=(8, 4), k=1)
    model.eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        model.mu_c.zero_(); model.logvar_c.zero_(); model.gmm_ready.fill_(True)
        out = model(x=x)
        kl_vae = gaussian_kl(out.mu, out.logvar).mean()
        torch.testing.assert_close(out.logs['kl'], kl_vae, atol=1e-5, rtol=1e-5)
        model.mu_c.fill_(3.)  # a component away from the posterior: a larger KL
        assert model(x=x).logs['kl'] > kl_vae + 1


def test_vade_prior_travels_with_the_state_dict():
    ready = VaDE(5, latent_dim=2, hidden=(8, 4), k=3).init_gmm(np.random.default_rng(0).normal(size=(30, 2)))
    fresh = VaDE(5, latent_dim=2, hidden=(8, 4), k=3)
    assert 'gmm_ready' in ready.state_dict() and not fresh.gmm_ready
    fresh.load_state_dict(ready.state_dict())
    assert bool(fresh.gmm_ready)
    x = torch.randn(4, 5)
    with torch.no_grad(): torch.testing.assert_close(fresh.eval()(x=x).logs['kl'], ready.eval()(x=x).logs['kl'])


def test_vade_fit_end_to_end():
    X = _blobs3()
    job = TrainJob(VaDE, dict(in_dim=5, latent_dim=2, hidden=(8, 4), k=3), {'x': X}, seed=0, config=TrainConfig(epochs=3), procedure=fit_vade)
    model, hist = job.run(device='cpu')
    assert set(hist['phase']) == {'pretrain', 'vade'} and bool(model.gmm_ready)
    pre, full = hist[hist.phase == 'pretrain'], hist[hist.phase == 'vade']
    assert full['epoch'].min() == pre['epoch'].max() + 1 and hist['epoch'].is_monotonic_increasing  # one epoch axis, no overlap
    assert hist.attrs['best_epoch'] in set(full['epoch'])  # the restored weights are the full-ELBO phase's
    g = vade_assign(model, X)
    assert np.isfinite(g).all() and np.allclose(g.sum(1), 1, atol=1e-5)


def test_vade_fit_is_cached_as_one_entry(tmp_path, monkeypatch):
    "A second identical job with the model cache runs no epoch and gives the same model (mixture prior on), history and assignments."
    X = _blobs3()
    job = TrainJob(VaDE, dict(in_dim=5, latent_dim=2, hidden=(8, 4), k=3), {'x': X}, seed=0, config=TrainConfig(epochs=3), procedure=fit_vade)
    m1, h1 = job.run(ModelCache(tmp_path), 'cpu')
    assert len(list(tmp_path.glob('*.pt'))) == 1  # both phases: one entry
    monkeypatch.setattr(core, '_run_epoch', lambda *a, **k: pytest.fail('an epoch ran although the fit was cached'))
    m2, h2 = job.run(ModelCache(tmp_path), 'cpu')
    pd.testing.assert_frame_equal(h2, h1)
    assert h2.attrs['best_epoch'] == h1.attrs['best_epoch'] and bool(m2.gmm_ready)
    np.testing.assert_array_equal(vade_assign(m2, X), vade_assign(m1, X))


# --- the hard task: jobs, run, results ----------------------------------------------------------------

def _inputs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(1, 5), n // 4)
    data = _data(n, seed)
    data['audio'] = (data['audio'] + y[:, None]).astype(np.float32)  # a little mood signal in the audio
    data['lyrics_mask'][:12] = data['midi_mask'][:12] = True  # at least 12 complete songs
    cond = pd.Series(rng.choice(['1970s', '1990s', 'unknown'], n), name='decade')
    C, names = one_hot(cond)
    return HardInputs(ids=np.array([f'{i:03d}' for i in range(n)], dtype=object), y=y, X=data['audio'],
                      audio_names=[f'a{i}' for i in range(DIMS['audio'])], cond=cond, C=C, cond_names=names, data=data)


def test_hard_jobs_order_seeds_and_initialisation():
    inputs = _inputs()
    jobs = hard_jobs(inputs, seeds=[3, 4], epochs=2, betas=[1.0], latent_dim=2, hidden=(8, 4), k=4)
    names = ['AE', 'β-VAE (β=1)', 'CVAE', 'tri-modal VAE', 'tri-modal VAE (complete songs only)', 'MoPoE', 'VaDE']
    assert list(jobs) == [(n, s) for s in (3, 4) for n in names]  # seed by seed, the model table's order
    assert jobs['VaDE', 3].procedure is fit_vade and jobs['AE', 3].procedure is None
    assert jobs['CVAE', 3].kwargs['cond_dim'] == inputs.C.shape[1] and set(jobs['CVAE', 3].data) == {'x', 'c'}
    assert len(jobs['tri-modal VAE (complete songs only)', 3].data['audio']) == inputs.complete.sum()
    assert all(j.config.epochs == 2 for j in jobs.values())
    assert jobs['MoPoE', 3].model is MoPoE and jobs['MoPoE', 3].data is inputs.data and jobs['VaDE', 3].kwargs['gmm_inits'] == 10
    seed_everything(4); ref = CVAE(**jobs['CVAE', 4].kwargs)  # how the notebook drew the weights before TrainJob
    got = jobs['CVAE', 4].build().state_dict()
    assert all(torch.equal(got[k], v) for k, v in ref.state_dict().items())
    few = hard_jobs(inputs, seeds=[0], latent_dim=2, hidden=(8, 4), min_complete=int(inputs.complete.sum()) + 1)
    assert ('tri-modal VAE (complete songs only)', 0) not in few and ('tri-modal VAE', 0) in few
    table = hard_table(inputs, jobs, latent_dim=2)
    baselines = ['standardised_audio_features', 'pca', 'pca_audio_condition', 'pca_balanced_modalities']
    assert list(table.index) == [*baselines, *map(slug, names)]
    assert table.loc['vade', 'clusterers'] == f'{OWN_PRIOR}, kmeans'
    assert table['baseline'].to_dict() == dict.fromkeys(baselines, '') | {'ae': 'pca', 'beta_vae_beta_1': 'pca', 'cvae': 'pca_audio_condition', 'vade': 'pca',
                                                                        **dict.fromkeys(['tri_modal_vae', 'tri_modal_vae_complete_songs_only', 'mopoe'], 'pca_balanced_modalities')}


def test_hard_baselines_are_pca_on_each_models_inputs():
    inputs = _inputs()
    b = hard_baselines(inputs, latent_dim=3, seed=0)
    assert list(b) == ['standardised audio features', 'PCA', 'PCA (audio ‖ condition)', 'PCA (balanced modalities)']
    assert b['standardised audio features'] is inputs.X and all(v.shape == (40, 3) for k, v in b.items() if k.startswith('PCA'))
    from sklearn.decomposition import PCA
    np.testing.assert_allclose(b['PCA (audio ‖ condition)'], PCA(3, random_state=0).fit_transform(np.concatenate([inputs.X, inputs.C], 1)), atol=1e-5)
    assert [baseline_name(m) for m in (AE, MLPVAE, VaDE, CVAE, TriModalVAE, MoPoE)] == ['PCA'] * 3 + ['PCA (audio ‖ condition)'] + ['PCA (balanced modalities)'] * 2


def test_balanced_concat_gives_each_block_one_unit_of_variance():
    fs = _FS(60)
    d = modality_data(fs, np.arange(60))
    bal = balanced_concat(d)
    assert bal.shape == (60, 4 + 3 + 2)
    for block, m in zip(np.split(bal, [4, 7], axis=1), ('audio', 'lyrics', 'midi')):
        has = fs.mask[m]
        np.testing.assert_allclose(block[has].var(0).sum(), 1, rtol=1e-4)  # the same total variance over its songs, whatever the width
        assert (block[~has] == 0).all()  # absent: zeros (the mean of the songs that have it)


def test_blocks_of_several_fields():
    fs = _FS(); fs.midi_names = ['m0', 'm1']
    assert block_names(fs, ('audio', 'midi')) == ['audio[0]', 'audio[1]', 'audio[2]', 'audio[3]', 'm0', 'm1']
    d = modality_data(fs, np.arange(30), {'audio': ('audio', 'midi'), 'lyrics': 'lyrics_emb'})
    assert d['audio'].shape == (30, 6) and list(d) == ['audio', 'lyrics', 'lyrics_mask']
    np.testing.assert_allclose(d['audio'].var(0).mean(), 1, rtol=1e-4)  # balanced, then unit variance per column on average


def test_hard_inputs_refuses_unknown_blocks():
    from mmvae.variants import hard_inputs
    with pytest.raises(ValueError, match="audio_features='mfcc': choose one of musicnn"): hard_inputs(None, audio_features='mfcc')
    with pytest.raises(ValueError, match="lyrics_features='bert'"): hard_inputs(None, lyrics_features='bert')


def test_pattern_scores_split_one_clustering_by_pattern():
    inputs = _inputs()
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(40) < .7, inputs.y, rng.integers(1, 5, 40))
    a = pd.DataFrame(dict(id=inputs.ids.astype(str), representation='r', clusterer='kmeans', seed=0, label=labels))
    ps = pattern_scores(inputs, pd.DataFrame(dict(representation=['r'], name=['R'])), a)
    pats = modality_patterns(inputs.data)
    assert ps['n_songs'].sum() == 40 and set(ps['pattern']) == set(pats)
    np.testing.assert_allclose((ps['n_songs'] * ps['acc']).sum() / 40, hungarian_accuracy(inputs.y, labels))  # overall ACC, song-weighted
    from sklearn.metrics import normalized_mutual_info_score as nmi
    row = ps.set_index('pattern').loc['audio+lyrics+midi']
    s = pats == 'audio+lyrics+midi'
    np.testing.assert_allclose(row['nmi'], nmi(inputs.y[s], labels[s]))
    t = pattern_table(pattern_summary(ps), 'nmi')
    assert t.shape == (1, 2 * len(set(pats))) and all("songs)" in c for c in t.columns)  # each pattern and its chance level


@pytest.fixture(scope='module')
def hard_run(tmp_path_factory):
    inputs = _inputs()
    jobs = hard_jobs(inputs, seeds=[0, 1], epochs=2, betas=[1.0], latent_dim=2, hidden=(8, 4), k=4)
    cache = tmp_path_factory.mktemp('models')
    return run_hard(inputs, jobs, latent_dim=2, k=4, cache=cache, n_jobs=1, progress=False), cache


def test_run_hard_rows_follow_the_result_contract(hard_run):
    result, _ = hard_run
    runs = result.runs
    assert list(runs.columns[:len(RUN_KEYS)]) == list(RUN_KEYS) and set(runs['task']) == {'hard'}
    assert (runs['representation'] == runs['name'].map(slug)).all()
    assert len(runs) == 2 * (11 + 1)  # 11 representations with K-Means, VaDE also with its mixture, per seed
    base = runs.drop_duplicates('representation').set_index('representation')['baseline']
    assert base['mopoe'] == base['tri_modal_vae'] == 'pca_balanced_modalities' and base['cvae'] == 'pca_audio_condition' and base['pca'] == ''
    assert set(base) - {''} <= set(runs['representation'])  # every learned row's PCA ran too
    assert set(runs.loc[runs.name == 'VaDE', 'clusterer']) == {'kmeans', OWN_PRIOR}
    vade = runs[runs.name == 'VaDE'].groupby('seed')['probe_f1'].nunique()
    assert (vade == 1).all()  # one probe per latent space
    assert len(result.assignments) == len(runs) * 40
    np.testing.assert_array_equal(result.labels('VaDE', OWN_PRIOR, seed=1),
                                  vade_assign(result.models['VaDE', 1], result.inputs.X).argmax(1))
    rob = result.robustness
    assert len(rob) == 3 * 2 * 2 and set(rob['modality']) == {'lyrics', 'midi'}  # 3 multi-modal models × 2 modalities × 2 seeds
    p = result.patterns
    assert set(p['representation']) == set(runs['representation']) and (p.groupby(['representation', 'clusterer', 'seed'])['n_songs'].sum() == 40).all()
    assert set(rob.loc[rob.name == 'tri-modal VAE (complete songs only)', 'trained_on']) == {int(result.inputs.complete.sum())}


def test_run_hard_again_loads_every_model(hard_run, monkeypatch):
    result, cache = hard_run
    monkeypatch.setattr(core, '_run_epoch', lambda *a, **k: pytest.fail('an epoch ran although every model was cached'))
    again = run_hard(result.inputs, result.jobs, latent_dim=2, k=4, cache=cache, n_jobs=1, progress=False)
    pd.testing.assert_frame_equal(again.runs, result.runs)


def test_write_hard_round_trip(hard_run, tmp_path):
    result, _ = hard_run
    files = write_hard(tmp_path, result)
    folder = tmp_path/'hard_task'
    assert {folder/'runs.csv', folder/'hard_task_robustness.csv', folder/'hard_task_patterns.csv', folder/'curves'/'vade_seed1.csv',
            folder/'latents'/'pca.npz', folder/'latents'/'mopoe.npz'} <= set(files)
    pd.testing.assert_frame_equal(pd.read_csv(folder/'hard_task_patterns.csv'), result.patterns, check_dtype=False)
    back = read_runs(tmp_path)
    assert back[['representation', 'clusterer', 'seed']].values.tolist() == result.runs[['representation', 'clusterer', 'seed']].values.tolist()
    np.testing.assert_allclose(back['acc'], result.runs['acc'])
    curve = pd.read_csv(folder/'curves'/'vade_seed1.csv')
    assert set(curve['phase']) == {'pretrain', 'vade'}


def test_robustness_summary(hard_run):
    result, _ = hard_run
    rs = robustness_summary(result.robustness)
    assert len(rs) == 6
    r = rs[(rs.name == 'tri-modal VAE') & (rs.modality == 'midi')].iloc[0]
    shifts = result.robustness.query("name == 'tri-modal VAE' and modality == 'midi'")['relative_shift']
    np.testing.assert_allclose([r.relative_shift_mean, r.relative_shift_std], [shifts.mean(), shifts.std()])


def test_cluster_use_counts_songs_not_cluster_ids():
    assert cluster_use([0, 1, 2, 3] * 5) == dict(largest_share=.25, effective_clusters=pytest.approx(4.))
    skewed = cluster_use([0] * 61 + [1, 2, 3, 4] * 2 + [1] * 21)  # five ids, one cluster of 61 of 90 songs
    assert skewed['largest_share'] == pytest.approx(61 / 90) and 1 < skewed['effective_clusters'] < 3


def test_hard_findings_follow_the_corrected_comparisons(hard_run):
    result, _ = hard_run
    km = result.runs[result.runs.clusterer == MAIN_CLUSTERER]
    comparisons = compare_to_baselines(km, result.assignments, pd.Series(result.inputs.y, index=result.inputs.ids), n_boot=200)
    assert set(comparisons['representation']) == set(km.loc[km['baseline'] != '', 'representation'])
    md = hard_findings(result, comparisons, 'toy data')
    assert md.startswith('## Findings') and 'On toy data' in md and 'verdict' not in md and 'better' not in md
    eff = np.mean([cluster_use(result.labels('VaDE', OWN_PRIOR, s))['effective_clusters'] for s in result.seeds])
    assert f"is {eff:.1f} of 4" in mixture_sentence(result) and mixture_sentence(result) in md
    assert all(f'- {line}' in md for line in robustness_sentences(robustness_summary(result.robustness)))
    assert '**Per modality pattern**' in md and 'macro-F1' in md


def test_composition_figure_shows_shares(hard_run):
    result, _ = hard_run
    fig = composition_figure(result)
    sums = pd.DataFrame([(t.xaxis, x, v) for t in fig.data for x, v in zip(t.x, t.y)]).groupby([0, 1])[2].sum()
    np.testing.assert_allclose(sums, 1)
    assert all('<br>' in a.text for a in fig.layout.annotations)  # subplot titles on two lines
