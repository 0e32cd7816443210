"""ConvVAE and HybridVAE: shapes round-trip, the lyrics mask really removes missing lyrics, inputs, training with the shared loop."""
import numpy as np
import pytest
import torch

from mmvae.core import embed, poe, standardize, train_model
from mmvae.hybrid import ConvEncoder, ConvVAE, HybridVAE, balance_blocks, medium_inputs

SHAPE, LYR, LAT = (32, 32), 12, 4


def _batch(n=8, seed=0, has=None):
    g = torch.Generator().manual_seed(seed)
    has = torch.tensor([i % 2 == 0 for i in range(n)]) if has is None else torch.as_tensor(has)
    return dict(mel=torch.randn(n, *SHAPE, generator=g), lyrics=torch.randn(n, LYR, generator=g), lyrics_mask=has)


def _hybrid(seed=0):
    torch.manual_seed(seed)
    return HybridVAE(SHAPE, lyrics_dim=LYR, latent_dim=LAT, channels=(4, 8), hidden=(16,))


@pytest.mark.parametrize('shape,channels', [((64, 64), (8, 16, 32)), ((32, 48), (4, 8)), ((16, 16), (4, 8, 16, 32))])
def test_conv_vae_shapes_round_trip(shape, channels):
    m = ConvVAE(shape, latent_dim=5, channels=channels)
    x = torch.randn(3, *shape)
    out = m(x)
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
    assert out.x_hat['mel'].shape == b['mel'].shape
    assert out.x_hat['lyrics'].shape == b['lyrics'].shape
    assert out.mu.shape == out.logvar.shape == (8, LAT)
    mu, logvar = m.encode(**b)
    assert mu.shape == (8, LAT)
    assert set(out.logs) == {'recon_audio', 'recon_lyrics', 'kl'}


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
        grads.append([p.grad.clone() for p in m.parameters()])
        mu = m.encode(**batch)[0].detach()
        grads[-1].append(mu)
        grads[-1].append(out.loss.detach())
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
    mu_a, lv_a = m.audio_encoder(b['mel'])
    mu, logvar = m.encode(**b)
    # product of the audio expert and the N(0, I) prior only
    prec = 1 + torch.exp(-lv_a)
    torch.testing.assert_close(mu, mu_a * torch.exp(-lv_a) / prec)
    torch.testing.assert_close(logvar, -torch.log(prec))


def test_product_of_experts_known_values():
    mu, logvar = poe(torch.tensor([[[2.]], [[4.]]]), torch.zeros(2, 1, 1), torch.ones(1, 2))  # the shared core PoE, as HybridVAE uses it
    torch.testing.assert_close(mu, torch.tensor([[2.]]))  # (0 + 2 + 4) / 3
    torch.testing.assert_close(logvar, torch.log(torch.tensor([[1 / 3]])))


def test_modality_weights_balance_dimensions():
    m = _hybrid()
    d_a, d_l = SHAPE[0] * SHAPE[1], LYR
    assert m.weights['audio'] * d_a == pytest.approx(m.weights['lyrics'] * d_l)
    assert m.weights['audio'] * d_a + m.weights['lyrics'] * d_l == pytest.approx(d_a + d_l)


def test_standardize_and_balance_blocks():
    X = np.array([[1., 10], [3, 10], [50, 50]])
    np.testing.assert_allclose(standardize(X, [True, True, False]), [[-1, 0], [1, 0], [0, 0]])
    g = standardize(np.arange(8.).reshape(2, 4), axis=None)
    assert g.mean() == pytest.approx(0, abs=1e-6) and g.std() == pytest.approx(1, abs=1e-5)
    rng = np.random.default_rng(0)
    b = balance_blocks(standardize(rng.normal(size=(200, 400))), standardize(rng.normal(size=(200, 10))))
    assert b.shape == (200, 410)
    assert (b[:, :400] ** 2).sum(1).mean() == pytest.approx(1, rel=1e-3)
    assert (b[:, 400:] ** 2).sum(1).mean() == pytest.approx(1, rel=1e-3)


class _Feats:
    "The fields of a FeatureSet that medium_inputs reads."
    def __init__(self, n=10, seed=0):
        rng = np.random.default_rng(seed)
        self.mel = rng.normal(5, 3, size=(n, *SHAPE)).astype(np.float32)
        self.lyrics_emb = rng.normal(size=(n, 20)).astype(np.float32)
        self.lyrics_lsa = rng.normal(size=(n, 6)).astype(np.float32)
        self.mask = {'audio': np.arange(n) != 3, 'lyrics': np.arange(n) % 3 != 0}


def test_medium_inputs_selects_audio_songs_and_masks_lyrics():
    f = _Feats()
    rows, data = medium_inputs(f, 'emb+lsa')
    assert list(rows) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert data['mel'].shape == (9, *SHAPE) and data['lyrics'].shape == (9, 26)
    np.testing.assert_array_equal(data['lyrics_mask'], f.mask['lyrics'][rows])
    assert np.all(data['lyrics'][~data['lyrics_mask']] == 0)
    assert data['mel'].mean() == pytest.approx(0, abs=1e-5) and data['mel'].std() == pytest.approx(1, abs=1e-4)
    with pytest.raises(ValueError, match="choose one of emb, lsa, emb\\+lsa"):
        medium_inputs(f, 'bert')


def test_models_train_with_the_shared_loop_and_embed():
    f = _Feats(n=24)
    rows, data = medium_inputs(f, 'lsa')
    torch.manual_seed(0)
    for model, inputs in ((ConvVAE(SHAPE, 3, (4, 8)), {'mel': data['mel']}),
                          (HybridVAE(SHAPE, data['lyrics'].shape[1], 3, (4, 8), (8,)), data)):
        hist = train_model(model, inputs, epochs=3, batch_size=8, progress=False)
        assert len(hist) == 3 and np.isfinite(hist['train_loss']).all()
        Z = embed(model, inputs)
        assert Z.shape == (len(rows), 3)
        np.testing.assert_array_equal(Z, embed(model, inputs))  # posterior means: deterministic


def test_same_seed_same_embedding():
    f = _Feats(n=16)
    _, data = medium_inputs(f)
    Zs = []
    for _ in range(2):
        torch.manual_seed(1)
        m = HybridVAE(SHAPE, data['lyrics'].shape[1], 3, (4, 8), (8,))
        train_model(m, data, epochs=2, batch_size=8, seed=1, progress=False)
        Zs.append(embed(m, data))
    np.testing.assert_array_equal(*Zs)


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
