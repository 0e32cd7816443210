"""ConvVAE and HybridVAE: shapes round-trip, the lyrics mask really removes missing lyrics, inputs, the CCA baseline, jobs and the task's run."""
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from mmvae.core import MAIN_CLUSTERER, RUN_KEYS, TrainConfig, compare_to_baselines, embed, read_runs, recon_error
from mmvae.hybrid import (CCA_NAME, MEDIUM_BASELINES, ConvEncoder, ConvVAE, HybridVAE, balance_blocks, cca_embed, comparison_phrase, linear_baselines,
                          medium_findings, medium_inputs, medium_jobs, pca_inputs, representation_table, run_medium)

SHAPE, AUD, LYR, LAT = (32, 32), 40, 12, 4


def _batch(n=8, seed=0, has=None):
    g = torch.Generator().manual_seed(seed)
    has = torch.tensor([i % 2 == 0 for i in range(n)]) if has is None else torch.as_tensor(has)
    return dict(audio=torch.randn(n, AUD, generator=g), lyrics=torch.randn(n, LYR, generator=g), lyrics_mask=has)


def _hybrid(seed=0):
    torch.manual_seed(seed)
    return HybridVAE(AUD, lyrics_dim=LYR, latent_dim=LAT, hidden=(16,))


@pytest.mark.parametrize('shape,channels', [((64, 64), (8, 16, 32)), ((32, 48), (4, 8)), ((16, 16), (4, 8, 16, 32))])
def test_conv_vae_shapes_round_trip(shape, channels):
    m = ConvVAE(shape, latent_dim=5, channels=channels)
    x = torch.randn(3, *shape)
    out = m(mel=x)
    assert out.x_hat.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, 5)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert m.decode(torch.zeros(2, 5)).shape == (2, *shape)
    assert set(out.logs) == {'recon', 'kl'}


def test_conv_encoder_rejects_indivisible_shape():
    with pytest.raises(ValueError, match='divisible by 2\\*\\*len\\(channels\\) = 4'):
        ConvEncoder((30, 32), 4, (4, 8))


def test_hybrid_vae_shapes_round_trip():
    m, b = _hybrid(), _batch()
    out = m(**b)
    assert out.x_hat['audio'].shape == b['audio'].shape
    assert out.x_hat['lyrics'].shape == b['lyrics'].shape
    assert out.mu.shape == out.logvar.shape == (8, LAT)
    assert set(out.logs) == {'recon', 'recon_audio', 'recon_lyrics', 'kl'}


def test_masked_lyrics_do_not_change_loss_or_gradients():
    m, b = _hybrid(), _batch()
    has = b['lyrics_mask']
    noisy = dict(b, lyrics=b['lyrics'].clone())
    noisy['lyrics'][~has] = 1e3 * torch.randn(int((~has).sum()), LYR)
    grads = []
    for batch in (b, noisy):
        m.zero_grad()
        torch.manual_seed(5)  # same sampling noise
        out = m(**batch)
        out.loss.backward()
        grads.append([p.grad.clone() for p in m.parameters()] + [m.encode(**batch)[0].detach(), out.loss.detach()])
    for g0, g1 in zip(*grads):
        assert torch.equal(g0, g1)


def test_present_lyrics_do_change_loss():
    "The mask test above could pass if the lyrics were never used: changing present lyrics must matter."
    m, b = _hybrid(), _batch()
    changed = dict(b, lyrics=b['lyrics'].clone())
    changed['lyrics'][b['lyrics_mask']] += 3.0
    torch.manual_seed(5); l0 = m(**b).loss
    torch.manual_seed(5); l1 = m(**changed).loss
    assert not torch.isclose(l0, l1)
    assert not torch.allclose(m.encode(**b)[0][b['lyrics_mask']], m.encode(**changed)[0][b['lyrics_mask']])


def test_batch_of_only_masked_songs_sends_no_gradient_to_lyrics_networks():
    m, b = _hybrid(), _batch(has=[False] * 8)
    m(**b).loss.backward()
    for part in (m.lyrics_decoder, m.lyrics_encoder):
        assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in part.parameters())
    assert sum(float(p.grad.abs().sum()) for p in m.audio_decoder.parameters()) > 0
    torch.manual_seed(0); out = m(**b)
    assert float(out.logs['recon_lyrics']) == 0.0


def test_song_without_lyrics_is_encoded_from_audio_alone():
    m, b = _hybrid(), _batch(has=[False] * 8)
    mu_a, lv_a = m.audio_encoder(b['audio']).chunk(2, dim=-1)
    mu, logvar = m.encode(**b)
    prec = 1 + torch.exp(-lv_a)  # product of the audio expert and the N(0, I) prior only
    torch.testing.assert_close(mu, mu_a * torch.exp(-lv_a) / prec)
    torch.testing.assert_close(logvar, -torch.log(prec))


def test_no_lyrics_mask_means_lyrics_everywhere():
    "The modality convention: a modality without `<m>_mask` is present in every song."
    m, b = _hybrid().eval(), _batch()
    everywhere = dict(b, lyrics_mask=torch.ones(8, dtype=torch.bool))
    del b['lyrics_mask']
    torch.testing.assert_close(m(**b).loss, m(**everywhere).loss)


def test_reconstruction_terms_are_weighted_by_the_study_rule_and_masked():
    m, b = _hybrid().eval(), _batch()
    assert m.weights == {'audio': 1.0, 'lyrics': AUD / LYR}  # the lyrics weigh as much as the audio
    out = m(**b)
    has = b['lyrics_mask'].float()
    torch.testing.assert_close(out.logs['recon_audio'], recon_error(out.x_hat['audio'], b['audio']).mean())
    torch.testing.assert_close(out.logs['recon_lyrics'], (m.weights['lyrics'] * has * recon_error(out.x_hat['lyrics'], b['lyrics'])).mean())
    torch.testing.assert_close(out.loss, out.logs['recon_audio'] + out.logs['recon_lyrics'] + out.logs['kl'])  # beta = 1


def test_balance_blocks_gives_each_block_unit_total_variance():
    rng = np.random.default_rng(0)
    b = balance_blocks(rng.normal(size=(200, 400)), rng.normal(size=(200, 10, 2)))
    assert b.shape == (200, 420)
    assert (b[:, :400] ** 2).sum(1).mean() == pytest.approx(1, rel=0.02)
    assert (b[:, 400:] ** 2).sum(1).mean() == pytest.approx(1, rel=0.1)


class _Feats:
    "The fields of a FeatureSet that medium_inputs reads."
    def __init__(self, n=10, seed=0):
        rng = np.random.default_rng(seed)
        self.mel = rng.normal(5, 3, size=(n, *SHAPE)).astype(np.float32)
        self.musicnn = rng.gamma(2, 1, size=(n, AUD)).astype(np.float32)
        self.audio_affect = rng.normal(size=(n, 5)).astype(np.float32)
        self.lyrics_affect = rng.normal(size=(n, 4)).astype(np.float32)
        self.lyrics_emb = rng.normal(size=(n, 20)).astype(np.float32)
        self.lyrics_lsa = rng.normal(size=(n, 6)).astype(np.float32)
        self.mask = {'audio': np.arange(n) != 3, 'lyrics': np.arange(n) % 3 != 0}


def test_medium_inputs_selects_audio_songs_and_masks_lyrics():
    f = _Feats()
    rows, data = medium_inputs(f, 'emb+lsa')
    assert list(rows) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert data['mel'].shape == (9, *SHAPE) and data['lyrics'].shape == (9, 26) and data['audio'].shape == (9, AUD)
    np.testing.assert_allclose(data['audio'].mean(0), 0, atol=1e-5); np.testing.assert_allclose(data['audio'].std(0), 1, atol=1e-4)
    np.testing.assert_array_equal(data['lyrics_mask'], f.mask['lyrics'][rows])
    assert np.all(data['lyrics'][~data['lyrics_mask']] == 0)
    assert data['mel'].mean() == pytest.approx(0, abs=1e-5) and data['mel'].std() == pytest.approx(1, abs=1e-4)
    with pytest.raises(ValueError, match="choose one of emb, lsa, emb\\+lsa, emb\\+affect"):
        medium_inputs(f, 'bert')
    with pytest.raises(ValueError, match="audio_features='mel': choose one of musicnn, musicnn\\+affect"):
        medium_inputs(f, audio_features='mel')
    f.mask['audio'][:] = False
    with pytest.raises(ValueError, match='no song has readable audio'):
        medium_inputs(f)


def _jobs(data, seeds=(0,), epochs=3):
    return medium_jobs(data, seeds, TrainConfig(epochs=epochs, batch_size=8), latent_dim=3, channels=(4, 8), hidden=(8,))


def test_jobs_train_with_the_shared_loop_and_embed():
    rows, data = medium_inputs(_Feats(n=24), 'lsa')
    jobs = _jobs(data)
    assert {type(j.build()) for j in jobs.values()} == {ConvVAE, HybridVAE}
    for job in jobs.values():
        model, hist = job.run()
        assert len(hist) == 3 and np.isfinite(hist['train_loss']).all() and np.isfinite(hist['val_loss']).all()
        assert embed(model, job.data).shape == (len(rows), 3)


def test_jobs_pickle_by_reference_and_rebuild_the_same_weights():
    "Workers receive jobs by plain pickle: the model classes must come from mmvae.hybrid, the weights from the seed."
    _, data = medium_inputs(_Feats(n=16))
    for job in _jobs(data).values():
        assert job.model.__module__ == 'mmvae.hybrid'
        again = pickle.loads(pickle.dumps(job))
        for a, b in zip(job.build().state_dict().values(), again.build().state_dict().values()):
            assert torch.equal(a, b)


def test_same_seed_same_embedding_other_seed_another():
    _, data = medium_inputs(_Feats(n=16))
    Z = {(n, s): embed(*[job.run()[0], job.data]) for (n, s), job in _jobs(data, (1, 1, 2), epochs=2).items()}
    jobs = _jobs(data, (1,), epochs=2)
    for name in ('Conv VAE', 'Hybrid VAE'):
        np.testing.assert_array_equal(Z[name, 1], embed(jobs[name, 1].run()[0], jobs[name, 1].data))
        assert not np.allclose(Z[name, 1], Z[name, 2])


def test_run_medium_end_to_end(tmp_path):
    "The task's run on a toy set: the result contract's rows, the linear baselines as sklearn makes them, written and read back."
    from sklearn.decomposition import PCA
    rows, data = medium_inputs(_Feats(n=30), 'emb')
    y, ids = rows % 5, np.array([f'{i:03d}' for i in rows])
    run = run_medium(data, y, ids, _jobs(data, (0, 1), epochs=2), latent_dim=3, n_jobs=1, progress=False)
    assert list(run.runs.columns[:len(RUN_KEYS)]) == list(RUN_KEYS) and set(run.runs['task']) == {'medium'}
    assert dict(zip(run.runs['name'], run.runs['representation'])) == {
        'PCA': 'pca', 'PCA (musicnn + lyrics)': 'pca_musicnn_lyrics', CCA_NAME: 'cca_musicnn_lyrics', 'Conv VAE': 'conv_vae',
        'Hybrid VAE': 'hybrid_vae'}
    assert dict(zip(run.runs['representation'], run.runs['baseline'])) == {
        'pca': '', 'pca_musicnn_lyrics': '', 'cca_musicnn_lyrics': '', 'conv_vae': 'pca', 'hybrid_vae': 'pca_musicnn_lyrics'}
    assert len(run.runs) == 5 * 3 * 2 and run.runs['probe_f1'].notna().all()
    np.testing.assert_array_equal(run.latents['PCA', 1], PCA(3, random_state=1).fit_transform(data['mel'].reshape(len(rows), -1)))
    np.testing.assert_array_equal(run.latents['PCA (musicnn + lyrics)', 0],
                                  PCA(3, random_state=0).fit_transform(balance_blocks(data['audio'], data['lyrics'])))
    np.testing.assert_array_equal(run.latents[CCA_NAME, 1], cca_embed(data['audio'], data['lyrics'], data['lyrics_mask'], 3))
    assert len(run.diagnostics) == 4 and run.diagnostics.set_index(['name', 'seed'])['lyrics_gap'].isna().to_dict() == {
        ('Conv VAE', 0): True, ('Hybrid VAE', 0): False, ('Conv VAE', 1): True, ('Hybrid VAE', 1): False}
    assert run.diagnostics.drop_duplicates('name').set_index('name')['r2_input'].to_dict() == {'Conv VAE': 'mel', 'Hybrid VAE': 'audio'}
    run.write(tmp_path)
    back = read_runs(tmp_path)
    pd.testing.assert_frame_equal(back[['representation', 'clusterer', 'seed']], run.runs[['representation', 'clusterer', 'seed']])
    assert back['baseline'].fillna('').tolist() == run.runs['baseline'].tolist()
    assert (tmp_path/'medium_task'/'vae_diagnostics.csv').is_file()
    assert sorted(p.name for p in (tmp_path/'medium_task'/'latents').iterdir()) == [
        'cca_musicnn_lyrics.npz', 'conv_vae.npz', 'hybrid_vae.npz', 'pca.npz', 'pca_musicnn_lyrics.npz']
    comparisons = compare_to_baselines(run.runs[run.runs.clusterer == MAIN_CLUSTERER], run.assignments, pd.Series(y, index=ids), n_boot=200)
    assert set(zip(comparisons['name'], comparisons['baseline_name'])) == set(MEDIUM_BASELINES.items())
    lines = medium_findings(run, data, TrainConfig(epochs=2), comparisons)
    assert comparison_phrase(comparisons, 'Hybrid VAE') in lines[5] and 'for PCA (musicnn + lyrics)' in lines[5]
    assert f"{int((~data['lyrics_mask']).sum())} of 29 songs have no lyrics" in lines[5]


def test_every_vae_has_its_pca_baseline_on_exactly_its_inputs():
    "The representation table names a PCA baseline per VAE; that PCA reads the VAE's inputs (the hybrid's blocks balanced)."
    _, data = medium_inputs(_Feats(n=20))
    jobs = _jobs(data)
    table = representation_table(data, jobs).set_index('name')
    assert set(MEDIUM_BASELINES) == {n for n, _ in jobs}
    for vae, base in MEDIUM_BASELINES.items():
        assert table.loc[vae, 'baseline'] == table.loc[base, 'representation'] and table.loc[base, 'baseline'] == ''
        assert table.loc[base, 'weights'] == 0
    X = pca_inputs(data)
    np.testing.assert_array_equal(X['PCA'], jobs['Conv VAE', 0].data['mel'].reshape(19, -1))
    hy = jobs['Hybrid VAE', 0].data
    np.testing.assert_array_equal(X['PCA (musicnn + lyrics)'], balance_blocks(hy['audio'], hy['lyrics']))
    assert table.loc['Hybrid VAE', 'inputs'] == 'audio, lyrics, lyrics_mask' and table.loc['Conv VAE', 'inputs'] == 'mel'


def test_medium_inputs_blocks():
    "Affect blocks are appended balanced: each block of the audio (lyrics) vector has the same total variance."
    f = _Feats(n=40)
    rows, plain = medium_inputs(f)
    _, both = medium_inputs(f, 'emb+affect', 'musicnn+affect')
    assert both['audio'].shape == (39, AUD + 5) and both['lyrics'].shape == (39, 20 + 4)
    var = lambda X, sl: (X[:, sl] ** 2).sum(1).mean()
    assert var(both['audio'], slice(0, AUD)) == pytest.approx(var(both['audio'], slice(AUD, None)), rel=1e-4)
    has = both['lyrics_mask']
    assert var(both['lyrics'][has], slice(0, 20)) == pytest.approx(var(both['lyrics'][has], slice(20, None)), rel=1e-4)
    assert np.all(both['lyrics'][~has] == 0)
    np.testing.assert_array_equal(plain['mel'], both['mel'])
    np.testing.assert_allclose(plain['audio'] / np.sqrt(AUD), both['audio'][:, :AUD] / np.sqrt((AUD + 5) / 2), rtol=1e-5, atol=1e-6)


def _cca_blocks(n=120, seed=0):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, 2))
    a = np.c_[shared @ rng.normal(size=(2, 8)), rng.normal(size=(n, 22))]
    lyr = np.c_[shared @ rng.normal(size=(2, 6)), rng.normal(size=(n, 14))]
    has = np.arange(n) % 3 != 0
    return a, np.where(has[:, None], lyr, 0.), has, shared


def test_cca_embed_shape_and_shared_directions():
    a, lyr, has, shared = _cca_blocks()
    z = cca_embed(a, lyr, has, n_components=2, pre_dim=10)
    assert z.shape == (120, 2) and z.dtype == np.float32
    X = np.c_[z, np.ones(120)]
    resid = X @ np.linalg.lstsq(X, shared, rcond=None)[0] - shared
    assert (1 - (resid ** 2).sum(0) / ((shared - shared.mean(0)) ** 2).sum(0)).min() > 0.8


def test_cca_embed_fits_on_songs_with_both_blocks_only():
    "The lyrics rows of songs without lyrics never matter; those songs get their audio canonical variate alone."
    from sklearn.cross_decomposition import CCA
    from sklearn.decomposition import PCA
    a, lyr, has, _ = _cca_blocks()
    z = cca_embed(a, lyr, has, n_components=2, pre_dim=10)
    junk = lyr.copy(); junk[~has] = 1e3 * np.random.default_rng(1).normal(size=((~has).sum(), lyr.shape[1]))
    np.testing.assert_allclose(cca_embed(a, junk, has, 2, 10), z, rtol=1e-5, atol=1e-5)
    A, L = PCA(10).fit_transform(a), PCA(10).fit(lyr[has]).transform(lyr)
    za, zl = CCA(2, max_iter=2000).fit(A[has], L[has]).transform(A, L)
    np.testing.assert_allclose(z[~has], za[~has], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z[has], (za[has] + zl[has]) / 2, rtol=1e-4, atol=1e-5)
    changed = lyr.copy(); changed[has] += np.random.default_rng(2).normal(size=(has.sum(), lyr.shape[1]))
    assert not np.allclose(cca_embed(a, changed, has, 2, 10)[has], z[has])  # the lyrics of songs that have them do count


def test_cca_embed_refuses_too_few_songs_with_lyrics():
    a, lyr, _, _ = _cca_blocks()
    with pytest.raises(ValueError, match=r'more songs with lyrics \(8\) than components per block \(8\)'):
        cca_embed(a, lyr, np.arange(120) < 8, n_components=4)


def test_linear_baselines_are_deterministic_and_named():
    _, data = medium_inputs(_Feats(n=40))
    a, again, other = (linear_baselines(data, 3, seed=s) for s in (0, 0, 1))
    assert list(a) == ['PCA', 'PCA (musicnn + lyrics)', CCA_NAME] and all(Z.shape == (39, 3) for Z in a.values())
    for name in a: np.testing.assert_array_equal(a[name], again[name])
    np.testing.assert_array_equal(a[CCA_NAME], other[CCA_NAME])  # CCA has no random state; PCA's randomized solver may


def test_dbscan_reports_exact_noise_share_and_cluster_count():
    "Blobs + far outliers, as the medium task clusters latents: eps from the data, outliers = noise, blobs = clusters."
    from mmvae.core import cluster, evaluate
    g = np.stack(np.meshgrid(np.arange(7.), np.arange(7.)), -1).reshape(-1, 2) * 0.1  # 49 points, spacing 0.1
    centres = np.array([[0., 0], [10, 0], [0, 10]])
    outliers = np.array([[100., 100], [-100, 50], [60, -90], [-80, -80], [40, 200], [300, 0]])
    Z = np.concatenate([g + c for c in centres] + [outliers])
    y = np.r_[np.repeat([1, 2, 3], 49), [1, 2, 3, 1, 2, 3]]
    perm = np.random.default_rng(0).permutation(len(Z))  # order must not matter
    labels, info = cluster(Z[perm], 'dbscan')
    assert info['n_clusters'] == 3
    assert info['noise_frac'] == pytest.approx(6 / 153)
    assert set(np.flatnonzero(labels == -1)) == set(np.flatnonzero(perm >= 147))  # exactly the outliers
    r = evaluate(Z[perm], labels, y[perm])
    assert r['n_clusters'] == 3 and r['noise_frac'] == pytest.approx(6 / 153)
    assert r['acc'] == pytest.approx(147 / 153)  # noise counts as wrong
    assert 'non-noise' in r['note']
