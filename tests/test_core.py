"""mmvae.core: VAE building blocks and training, clustering and metrics, figures."""
import hashlib, os, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmvae.core import (as_list, model_device, reconstruct, recon_error, standardize, seeded, fit_model)
from mmvae.core import (CLUSTERERS, MLPVAE, RUN_KEYS, active_units, align_labels, ModelOutput, ModelCache, TrainConfig, TrainJob,
                        VAEEmbedder, cluster, cluster_runs, confusion, dbscan_eps, embed, evaluate, gaussian_kl, hungarian_accuracy,
                        latent_map, limit_threads, linear_probe, majority_rate, metric_bars, mlp, project_2d, purity, read_assignments,
                        read_latent, latent_files, read_runs, reparameterize, save_figure, seed_everything, setup_plotly,
                        summarize_runs, train_model, training_curves, write_results)
from mmvae.core import (CHANCE_METRICS, COMPARISON_COLUMNS, NULL_COLUMNS, chance_levels, compare_to_baselines, holm, permuted_tables,
                        resampled_tables, resamples_for, score_tables, slug)

limit_threads(1)
METRICS_WITH_CHANCE = ('ami', *NULL_COLUMNS)  # what every run row gains beside the older metrics


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
    out = vae(x=x)
    assert isinstance(out, ModelOutput)
    recon = 0.5 * (x - out.x_hat).pow(2).sum(-1)  # summed over features
    torch.testing.assert_close(out.logs['recon'], recon.mean())  # averaged over the batch
    torch.testing.assert_close(out.loss, (recon + 3 * gaussian_kl(out.mu, out.logvar)).mean())


def _fit(X, seed, device=None, cache=None, checkpoint=None, **config):
    job = TrainJob(MLPVAE, dict(in_dim=X.shape[1], latent_dim=2, hidden=(16,)), {'x': X}, seed, TrainConfig(**{'epochs': 8} | config))
    m = job.build()
    return m, train_model(m, job.data, job.config, seed, device, progress=False, checkpoint=checkpoint, cache=cache)


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
    h = train_model(model, {'x': x, 'm': m}, TrainConfig(epochs=60, lr=0.1, val_frac=0), seed=0, progress=False)
    assert 'train_err' in h and h['val_loss'].isna().all()
    np.testing.assert_allclose(model.w.detach().cpu().numpy(), x.mean(0), atol=0.15)
    assert embed(model, {'x': x, 'm': m}).shape == (200, 3)


def test_embedder_in_pipeline(X):
    pipe = make_pipeline(StandardScaler(), VAEEmbedder(latent_dim=3, hidden=(16,), epochs=5, random_state=4))
    Z = pipe.fit_transform(X)
    assert Z.shape == (len(X), 3) and Z.dtype == np.float32
    np.testing.assert_array_equal(clone(pipe).fit(X).transform(X), Z)
    np.testing.assert_array_equal(pipe.transform(X), Z)
    assert pipe[-1].history_['epoch'].iloc[0] == 1
    assert list(pipe.get_feature_names_out()) == ['z0', 'z1', 'z2']


def test_active_units():
    rng = np.random.default_rng(0)
    mu = np.c_[rng.normal(size=200), rng.normal(scale=0.5, size=200), np.full(200, 2.), rng.normal(scale=0.05, size=200)]
    assert active_units(mu) == 2  # variances 1, 0.25 count; 0 and 0.0025 do not
    assert active_units(mu, threshold=0.001) == 3


def test_embedder_errors(X):
    with pytest.raises(ValueError, match='not fitted'): VAEEmbedder().transform(X)
    e = VAEEmbedder(latent_dim=2, hidden=(8,), epochs=1).fit(X)
    with pytest.raises(ValueError, match='expecting 15 features'): e.transform(X[:, :4])
    with pytest.raises(ValueError, match='NaN'): VAEEmbedder(epochs=1).fit(np.where(X > 2, np.nan, X))


def test_embedder_passes_sklearns_estimator_checks():
    "scikit-learn's own conformance checks (input validation, cloning, fit idempotence, subset invariance...)."
    from sklearn.utils.estimator_checks import check_estimator
    failed = check_estimator(VAEEmbedder(latent_dim=2, hidden=(8,), epochs=2, device='cpu'), on_fail=None)
    assert [r['check_name'] for r in failed if r['status'] == 'failed'] == []


def test_embedder_leaves_the_global_generators_alone(X):
    torch.manual_seed(11); np.random.seed(11); want = torch.rand(1), np.random.rand()
    torch.manual_seed(11); np.random.seed(11)
    VAEEmbedder(latent_dim=2, hidden=(8,), epochs=2).fit(X)
    assert (torch.rand(1), np.random.rand()) == want


# --- clustering and metrics ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def blobs():
    rng = np.random.default_rng(1)
    Z = np.concatenate([rng.normal(c, 0.3, size=(30, 3)) for c in ((0, 0, 0), (6, 0, 0), (0, 6, 0), (0, 0, 6))])
    return Z, np.repeat([1, 2, 3, 4], 30)


def test_hungarian_accuracy_permuted_and_hand_computed():
    y = np.array([1, 1, 2, 2, 3, 3, 3])
    assert hungarian_accuracy(y, np.array([2, 2, 0, 0, 1, 1, 1])) == 1.0  # a permutation of the true labels
    # contingency (cluster x class): c0 = {1: 2, 2: 1}, c1 = {2: 1, 3: 3}; best: c0 -> 1, c1 -> 3: 5 of 7
    assert hungarian_accuracy(y, np.array([0, 0, 0, 1, 1, 1, 1])) == pytest.approx(5 / 7)
    # more clusters than classes: the unmatched one counts as wrong
    assert hungarian_accuracy([1, 1, 2, 2], [0, 1, 2, 3]) == pytest.approx(2 / 4)
    # one cluster: the majority rate
    assert hungarian_accuracy(y, np.zeros(7)) == pytest.approx(3 / 7) == majority_rate(y)
    # noise never counts
    assert hungarian_accuracy([1, 1, 2, 2], [5, 5, 6, -1]) == pytest.approx(3 / 4)


def test_purity_hand_computed():
    y = [1, 1, 2, 2, 1, 1]
    assert purity(y, ['a', 'a', 'b', 'b', 'c', 'c']) == 1.0  # two clusters may vote for the same class
    assert hungarian_accuracy(y, ['a', 'a', 'b', 'b', 'c', 'c']) == pytest.approx(4 / 6)  # ... matching may not
    assert purity([1, 2, 2, 3, 3, 3], [0, 0, 0, 1, 1, 1]) == pytest.approx((2 + 3) / 6)
    assert purity([1, 2, 3, 4], [0, 1, 2, 3]) == 1.0  # singletons are pure
    assert purity([1, 1, 2, 2], [0, 0, -1, -1]) == 0.5
    assert np.isnan(purity([1, 2], [-1, -1]))


def test_align_labels():
    y = [1, 1, 2, 2, 3, 3]
    np.testing.assert_array_equal(align_labels(y, [9, 9, 4, 4, -1, 4]), [1, 1, 2, 2, -1, 2])
    np.testing.assert_array_equal(align_labels(y, [0, 1, 2, 3, 4, 4]), [1, 4, 2, 5, 3, 3])
    p = np.array([2, 2, 0, 0, 1, 1])
    assert evaluate(np.arange(12.).reshape(6, 2), align_labels(y, p), y) == evaluate(np.arange(12.).reshape(6, 2), p, y)


def test_majority_rate():
    assert majority_rate([3, 3, 1, 2, 3]) == pytest.approx(0.6)
    assert majority_rate(['x']) == 1.0


def test_evaluate_hand_computed_external_metrics():
    y = np.array([1, 1, 2, 2])
    Z = np.array([[0., 0], [0, 1], [5, 0], [5, 1]])
    r = evaluate(Z, np.array([1, 1, 0, 0]), y)
    for m in ('ari', 'nmi', 'acc', 'purity'): assert r[m] == pytest.approx(1.0)
    assert r['majority'] == 0.5 and r['n_clusters'] == 2 and r['noise_frac'] == 0 and r['note'] == ''
    # silhouette by hand: a = 1, b = mean(5, sqrt(26)) for every point
    b = (5 + np.sqrt(26)) / 2
    assert r['silhouette'] == pytest.approx((b - 1) / b)
    # the worst split of 2 x 2: ARI = -0.5, NMI = 0
    r2 = evaluate(Z, np.array([0, 1, 0, 1]), y)
    assert r2['ari'] == pytest.approx(-0.5) and r2['nmi'] == pytest.approx(0, abs=1e-12)
    assert r2['acc'] == pytest.approx(0.5) and r2['purity'] == pytest.approx(0.5)


def test_evaluate_single_cluster_is_nan_with_reason(blobs):
    Z, y = blobs
    r = evaluate(Z, np.zeros(len(Z), int), y)
    for m in ('silhouette', 'calinski_harabasz', 'davies_bouldin'): assert np.isnan(r[m])
    assert 'one cluster' in r['note'] and 'undefined' in r['note']
    assert r['acc'] == pytest.approx(r['majority']) and r['n_clusters'] == 1


def test_evaluate_all_noise_is_nan_with_reason(blobs):
    Z, y = blobs
    r = evaluate(Z, -np.ones(len(Z), int), y)
    for m in ('silhouette', 'calinski_harabasz', 'davies_bouldin', 'ari', 'nmi', 'purity', 'acc'): assert np.isnan(r[m])
    assert 'noise' in r['note'] and r['noise_frac'] == 1.0 and r['n_clusters'] == 0


def test_evaluate_dbscan_internal_metrics_on_non_noise(blobs):
    Z, y = blobs
    labels = np.repeat([0, 1, 2, 3], 30); labels[:3] = -1
    r = evaluate(Z, labels, y)
    from sklearn.metrics import silhouette_score
    assert r['silhouette'] == pytest.approx(silhouette_score(Z[3:], labels[3:]))
    assert r['acc'] == pytest.approx(117 / 120) and 'non-noise' in r['note'] and r['noise_frac'] == pytest.approx(3 / 120)



# --- chance levels, AMI, comparisons with a baseline ------------------------------------------------------------------

def _plain_scores(y, p):
    from sklearn import metrics as skm
    return dict(acc=hungarian_accuracy(y, p), nmi=skm.normalized_mutual_info_score(y, p), ami=skm.adjusted_mutual_info_score(y, p),
                ari=skm.adjusted_rand_score(y, p), purity=purity(y, p))


@pytest.mark.parametrize('k', [2, 5, 6, 20])  # fewer clusters than moods, as many, more (every map tried), many more (Hungarian)
def test_table_metrics_match_the_plain_functions_on_resamples(k):
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 5, 150), rng.integers(-1, k, 150)  # with DBSCAN noise
    idx = rng.integers(0, 150, (6, 150))
    got = score_tables(resampled_tables(y, p, idx), np.unique(p))
    want = pd.DataFrame([_plain_scores(y[i], p[i]) for i in idx])
    for m in CHANCE_METRICS: np.testing.assert_allclose(got[m], want[m], atol=1e-9, err_msg=m)


def test_chance_levels_match_a_brute_force_simulation():
    "Unequal moods and clusters, some noise: the vectorised null agrees with shuffling the labels and scoring each shuffle."
    rng = np.random.default_rng(0)
    y = np.repeat([1, 2, 3, 4, 5], [34, 33, 43, 38, 32])  # the real dataset's proportions, 180 songs
    labels = rng.choice([-1, 0, 1, 2, 3, 4], size=len(y), p=[.05, .35, .2, .2, .1, .1])
    got = chance_levels(y, labels, n=2000, seed=1)
    sim = pd.DataFrame([_plain_scores(y, rng.permutation(labels)) for _ in range(1000)])
    for m in CHANCE_METRICS:
        assert got[f'{m}_null'] == pytest.approx(sim[m].mean(), abs=0.004), m
        assert got[f'{m}_null95'] == pytest.approx(sim[m].quantile(.95), abs=0.012), m
    assert got['acc_null'] > majority_rate(y)  # the chance level of ACC is not the majority rate
    assert set(got) == set(NULL_COLUMNS) and chance_levels(y, labels, n=2000, seed=1) == got


def test_chance_of_a_balanced_partition_of_150_songs():
    "The issue's numbers: a random balanced 5-way partition of 150 songs scores ACC ≈ 0.28 and NMI ≈ 0.035."
    y = np.repeat(np.arange(5), 30)
    got = chance_levels(y, y)
    assert got['acc_null'] == pytest.approx(0.28, abs=0.01) and got['nmi_null'] == pytest.approx(0.035, abs=0.003)
    assert abs(got['ami_null']) < 0.003 and abs(got['ari_null']) < 0.003


def test_ami_is_zero_at_random_and_one_when_identical(blobs):
    Z, y = blobs
    rng = np.random.default_rng(0)
    ami = [evaluate(Z, rng.integers(0, 4, len(y)), y, chance_draws=0)['ami'] for _ in range(20)]
    assert abs(np.mean(ami)) < 0.01 and max(map(abs, ami)) < 0.05
    assert evaluate(Z, y, y)['ami'] == pytest.approx(1.0) and evaluate(Z, 7 - y, y)['ami'] == pytest.approx(1.0)  # relabelled too
    r = evaluate(Z, y, y)
    assert r['acc'] > r['acc_null95'] and r['nmi'] > r['nmi_null95'] and abs(r['ami_null']) < 0.01


def test_permuted_tables_keep_the_cluster_sizes():
    y, p = np.repeat([0, 1, 2], 10), np.repeat([-1, 4, 5], [3, 20, 7])
    t = permuted_tables(y, p, 50)
    assert (t.sum(1) == [3, 20, 7]).all() and (t.sum(2) == [10, 10, 10]).all()


def test_holm_hand_computed():
    # sorted: 0.005 × 4 = 0.02, 0.01 × 3 = 0.03, 0.03 × 2 = 0.06, 0.04 × 1 = 0.04 → raised to 0.06 (monotone)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.2, np.nan, 0.01]), [0.2, np.nan, 0.02])  # NaN is not in the family
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert resamples_for(24) == 959 and 2 / (resamples_for(24) + 1) <= 0.05 / 24 < 2 / resamples_for(24)


def _planted_study(n=150, seeds=(0, 1, 2)):
    "Run rows and assignments of a task where 'better' is planted above PCA and 'same' is as good as PCA."
    ids = [f'{i:03d}' for i in range(n)]
    truth = pd.Series(np.arange(n) % 5, index=ids)
    def noisy(keep, seed):
        r = np.random.default_rng(seed)
        lab = truth.to_numpy().copy(); flip = r.random(n) > keep
        lab[flip] = r.integers(0, 5, flip.sum()); return lab
    plan = {'PCA': ('', .35), 'better': ('PCA', .75), 'same': ('PCA', .35)}
    runs, asg = [], []
    for i, (name, (base, keep)) in enumerate(plan.items()):
        for s in seeds:
            runs.append(dict(task='easy', representation=slug(name), name=name, clusterer='kmeans', seed=s, baseline=slug(base) if base else ''))
            asg.append(pd.DataFrame(dict(id=ids, representation=slug(name), clusterer='kmeans', seed=s, label=noisy(keep, 10 * i + s))))
    return pd.DataFrame(runs), pd.concat(asg, ignore_index=True), truth


def test_paired_bootstrap_finds_a_planted_difference_and_not_a_null_one():
    runs, asg, truth = _planted_study()
    c = compare_to_baselines(runs, asg, truth)
    assert list(c) == list(COMPARISON_COLUMNS) and len(c) == 2 * 3 and (c['n_boot'] == 2000).all()
    better, same = c[c['representation'] == 'better'], c[c['representation'] == 'same']
    assert better['significant'].all() and (better['ci_low'] > 0).all() and (better['p'] < 0.001).all()
    assert not same['significant'].any() and ((same['ci_low'] < 0) & (same['ci_high'] > 0)).all()
    # the difference is the mean over seeds of the per-seed differences on all songs
    from sklearn.metrics import normalized_mutual_info_score as nmi
    lab = {(r, s): g['label'].to_numpy() for (r, s), g in asg.groupby(['representation', 'seed'])}
    want = np.mean([nmi(truth, lab['better', s]) - nmi(truth, lab['pca', s]) for s in range(3)])
    assert better.set_index('metric').loc['nmi', 'diff'] == pytest.approx(want, abs=1e-12)
    pd.testing.assert_frame_equal(compare_to_baselines(runs, asg, truth), c)  # same seed, same numbers


def test_paired_bootstrap_pairs_only_the_common_seeds_and_songs():
    runs, asg, truth = _planted_study()
    drop = (asg['representation'] == 'better') & (asg['seed'] == 2)
    c = compare_to_baselines(runs, asg[~drop & (asg['id'] != '000')], truth, n_boot=200)
    assert c.set_index('representation').loc['better', 'seeds'].tolist() == [2] * 3 and (c['songs'] == 149).all()
    assert compare_to_baselines(runs.assign(baseline=''), asg, truth).empty  # no baseline named: no comparison


def test_write_results_checks_the_baseline(blobs, tmp_path):
    Z, y = blobs
    ids = [f'{i:03d}' for i in range(len(Z))]
    pca, lab = cluster_runs(Z, y, ids, methods=('kmeans',), k=4, task='easy', name='PCA')
    vae, lab2 = cluster_runs(Z, y, ids, methods=('kmeans',), k=4, task='easy', name='VAE', baseline='PCA (audio)')
    with pytest.raises(ValueError, match=r"unknown baseline 'pca_audio' of 'vae': not a representation of the easy task \(pca, vae\)"):
        write_results(tmp_path, 'easy', pca + vae, pd.concat([lab, lab2]))
    vae = [r | dict(baseline='pca') for r in vae]
    write_results(tmp_path, 'easy', pca + vae, pd.concat([lab, lab2]))
    assert read_runs(tmp_path).set_index('representation')['baseline'].to_dict() == {'pca': '', 'vae': 'pca'}

@pytest.mark.parametrize('method', ['kmeans', 'agglomerative', 'gmm', 'dbscan'])
def test_cluster_recovers_blobs(blobs, method):
    Z, y = blobs
    labels, info = cluster(Z, method, k=4, random_state=0)
    assert info['n_clusters'] == 4 and info['method'] == method
    if method == 'dbscan':  # the knee eps leaves the Gaussian tails as noise, and noise counts as wrong
        assert info['eps'] > 0 and 0 < info['noise_frac'] < 0.15
        assert hungarian_accuracy(y, labels) == pytest.approx(1 - info['noise_frac'])
    else: assert hungarian_accuracy(y, labels) > 0.95


def test_cluster_is_deterministic(blobs):
    Z, y = blobs
    Z = Z + np.random.default_rng(0).normal(scale=3, size=Z.shape)  # overlapping, so seeds matter
    for m in ('kmeans', 'gmm'):
        a, b = cluster(Z, m, k=4, random_state=3)[0], cluster(Z, m, k=4, random_state=3)[0]
        np.testing.assert_array_equal(a, b)
        assert evaluate(Z, a, y) == evaluate(Z, b, y)


def test_cluster_unknown_method(blobs):
    with pytest.raises(ValueError, match='unknown clustering method'): cluster(blobs[0], 'spectral')


def test_dbscan_eps_at_the_knee():
    # 50 points on a unit-spaced line plus 5 far outliers: k-distance is 1 inside, large for the outliers
    Z = np.concatenate([np.arange(50.)[:, None], 1000 + 100 * np.arange(5.)[:, None]])
    eps = dbscan_eps(Z, min_samples=2)
    assert eps == pytest.approx(1.0)


def test_dbscan_min_samples_rule():
    rng = np.random.default_rng(0)
    assert cluster(rng.normal(size=(200, 3)), 'dbscan')[1]['min_samples'] == 6  # 2 * d
    assert cluster(rng.normal(size=(200, 1)), 'dbscan')[1]['min_samples'] == 4  # at least 4
    info = cluster(rng.normal(size=(60, 50)), 'dbscan')[1]
    assert info['min_samples'] == 6 and info['noise_frac'] < 1  # at most n / 10, not 100 > n


def test_summarize_runs():
    df = pd.DataFrame(dict(rep=['a', 'a', 'b'], seed=[0, 1, 0], acc=[0.5, 0.7, 0.2], note=['', 'one cluster: undefined', '']))
    s = summarize_runs(df, 'rep', ['acc'])
    assert list(s.columns) == ['rep', 'acc_mean', 'acc_std', 'n_runs', 'n_undefined']
    assert s.acc_mean.tolist() == pytest.approx([0.6, 0.2])
    assert s.acc_std[0] == pytest.approx(np.std([0.5, 0.7], ddof=1)) and np.isnan(s.acc_std[1])
    assert s.n_runs.tolist() == [2, 1] and s.n_undefined.tolist() == [1, 0]


def test_linear_probe(blobs):
    Z, y = blobs
    assert linear_probe(Z, y) == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(size=Z.shape)
    assert linear_probe(noise, y) < 0.5
    assert linear_probe(noise, y, seed=1) == linear_probe(noise, y, seed=1)


def test_linear_probe_small_classes(blobs):
    "A class with fewer songs than folds lowers the fold count; a class of one song gives NaN and a warning, not an error."
    Z, y = blobs
    y3 = np.r_[np.asarray(y)[:-3], 9, 9, 9]  # a mood of 3 songs: 3 folds
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no sklearn warning about too few members either
        assert np.isfinite(linear_probe(Z, y3, folds=10))
    with pytest.warns(UserWarning, match='at least 2 examples'):
        assert np.isnan(linear_probe(Z, np.r_[np.asarray(y)[:-1], 9]))
    with pytest.warns(UserWarning, match='only one class'):
        assert np.isnan(linear_probe(Z, np.zeros(len(Z), int)))


def test_as_list_accepts_papermill_strings():
    assert as_list('[0, 1, 2]') == [0, 1, 2] and as_list('0,1,2') == [0, 1, 2] and as_list(' [3] ') == [3]
    assert as_list((0.5, 4), float) == [0.5, 4.0] and as_list('[0.5, 1.0, 4.0]', float) == [0.5, 1.0, 4.0]
    assert as_list(np.array([1, 2])) == [1, 2] and as_list(5) == [5] and as_list([]) == []


def test_reconstruct_matches_decode_of_means_and_returns_numpy(X):
    seed_everything(0)
    m = MLPVAE(X.shape[1], latent_dim=2, hidden=(8,)).eval()
    with torch.no_grad(): want = m.decode(m.encode(torch.as_tensor(X))[0]).numpy()
    got = reconstruct(m, {'x': X}, batch_size=7, device='cpu')
    assert isinstance(got, np.ndarray) and got.shape == X.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert model_device(m) == torch.device('cpu') and model_device(torch.nn.ReLU()) == torch.device('cpu')

    class Two(torch.nn.Module):  # a decoder returning one reconstruction per modality
        def __init__(self): super().__init__(); self.lin = torch.nn.Linear(X.shape[1], 2)
        def encode(self, x, **_): return self.lin(x), torch.zeros(len(x), 2)
        def decode(self, z, **_): return {'a': z, 'b': 2 * z}
    two = Two()
    out = reconstruct(two, {'x': X}, batch_size=50)
    assert set(out) == {'a', 'b'} and out['a'].shape == (len(X), 2)
    np.testing.assert_allclose(out['b'], 2 * out['a'])


def test_recon_error_and_standardize():
    assert recon_error(torch.ones(2, 3, 4), torch.zeros(2, 3, 4)).tolist() == [6.0, 6.0]
    np.testing.assert_allclose(standardize(np.array([[1., 5], [3, 5], [100, 100]]), [True, True, False]), [[-1, 0], [1, 0], [0, 0]])
    g = standardize(np.arange(8.).reshape(2, 4), axis=None)
    assert g.dtype == np.float32 and g.mean() == pytest.approx(0, abs=1e-6) and g.std() == pytest.approx(1, abs=1e-5)


def test_seed_everything_asks_for_deterministic_kernels_on_cuda(monkeypatch):
    "With CUDA (simulated): deterministic algorithms (warn only) and a cuBLAS workspace config unless one is set."
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'manual_seed_all', lambda seed: None)
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    try:
        seed_everything(0)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
        monkeypatch.setenv('CUBLAS_WORKSPACE_CONFIG', ':16:8')
        seed_everything(0)
        assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':16:8'  # a user's setting is kept
    finally: torch.use_deterministic_algorithms(*was[:1], warn_only=was[1])


def test_seeded_is_a_global_seed_without_the_side_effect():
    torch.manual_seed(5); want = torch.randn(4)
    torch.manual_seed(99); before = torch.random.get_rng_state()
    with seeded(5): got = torch.randn(4)
    assert torch.equal(got, want) and torch.equal(torch.random.get_rng_state(), before)


def test_same_seed_same_metrics(X):
    "The whole chain standardise → VAE → K-Means → metrics repeats exactly with the same seed."
    y = np.repeat([1, 2, 3], 40)
    def run(seed):
        Z = make_pipeline(StandardScaler(), VAEEmbedder(latent_dim=3, hidden=(16,), epochs=6, random_state=seed)).fit_transform(X)
        return evaluate(Z, cluster(Z, 'kmeans', k=3, random_state=seed)[0], y)
    assert run(5) == run(5)


def test_result_contract_round_trip(blobs, tmp_path):
    "Rows and files written by write_results read back the same through read_runs, read_assignments and read_latent."
    Z, y = blobs
    ids = [f'{i:03d}' for i in range(len(Z))]
    rows, lab = cluster_runs(Z, y, ids, seed=1, k=4, task='hard', name='β-VAE (β=4)', probe_f1=0.25)
    assert [r['clusterer'] for r in rows] == list(CLUSTERERS) and tuple(rows[0])[:5] == RUN_KEYS
    assert {r['representation'] for r in rows} == {'beta_vae_beta_4'} and {r['name'] for r in rows} == {'β-VAE (β=4)'}
    assert {r['baseline'] for r in rows} == {''} and {*METRICS_WITH_CHANCE} <= set(rows[0])
    assert len(lab) == len(CLUSTERERS) * len(Z) and set(lab.columns) == {'id', 'representation', 'clusterer', 'seed', 'label'}
    files = write_results(tmp_path, 'hard', rows, lab, {'beta_vae_beta_4': (ids, Z)})
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        'hard_task/runs.csv', 'hard_task/summary.csv', 'hard_task/assignments.csv', 'hard_task/latents/beta_vae_beta_4.npz']
    runs = read_runs(tmp_path)
    pd.testing.assert_frame_equal(runs[['representation', 'name', 'clusterer', 'acc', 'probe_f1']],
                                  pd.DataFrame(rows)[['representation', 'name', 'clusterer', 'acc', 'probe_f1']])
    back = read_assignments(tmp_path)
    assert back['id'].iloc[0] == '000' and len(back) == len(lab) and set(back['task']) == {'hard'}
    ids_back, z = read_latent(latent_files(tmp_path)['hard', 'beta_vae_beta_4'])
    assert ids_back.tolist() == ids and z.dtype == np.float32
    summary = pd.read_csv(files[1])
    assert summary['n_runs'].tolist() == [1] * len(CLUSTERERS) and summary['name'].iloc[0] == 'β-VAE (β=4)'
    with pytest.raises(FileNotFoundError, match='run the task notebooks'): read_runs(tmp_path/'empty')


# --- figures ---------------------------------------------------------------------------------------------------------

def test_figures(blobs, tmp_path):
    setup_plotly()
    Z, y = blobs
    labels = cluster(Z, 'dbscan')[0]
    fig = latent_map(Z, {'mood': y, 'DBSCAN': labels}, method='pca', hover=[str(i) for i in range(len(Z))])
    names = [t.name for t in fig.data]
    assert names[:4] == ['1 passionate', '2 cheerful', '3 wistful', '4 humorous'] and ('noise' in names) == bool((labels == -1).any())
    assert sum(len(t.x) for t in fig.data) == 2 * len(Z)
    h = train_model(MLPVAE(3, 2, (8,)), {'x': Z.astype(np.float32)}, TrainConfig(epochs=3), progress=False)
    fig = training_curves({'a': h, 'b': h})
    assert [a.text for a in fig.layout.annotations] == ['loss', 'recon', 'kl']
    runs = pd.DataFrame([dict(rep=r, seed=s, **evaluate(Z, cluster(Z, 'kmeans', k=4, random_state=s)[0], y))
                         for r in ('x', 'y') for s in (0, 1)])
    fig = metric_bars(summarize_runs(runs, 'rep'), 'acc', 'rep')
    assert list(fig.data[0].x) == ['x', 'y']
    # confusion: a permuted perfect clustering is diagonal once columns follow the Hungarian match
    fig = confusion(y, (y % 4) + 10)
    M = np.asarray(fig.data[0].z)
    assert (M == np.diag(np.diag(M))).all() and M.trace() == len(y)
    assert fig.data[0].y[0] == '1 passionate' and fig.layout.width is None and fig.layout.meta['png_width'] > 0  # fits the column
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        files = save_figure(fig, tmp_path/'figs'/'confusion')
    assert files[0].suffix == '.html' and files[0].stat().st_size > 0 and (tmp_path/'figs'/'plotly.min.js').is_file()
    assert all(f.is_file() for f in files)


@pytest.fixture
def fresh_png(monkeypatch):
    "PNG export as in a fresh process (untried, no renderer); the state before is restored afterwards."
    import mmvae.core as core
    monkeypatch.setitem(core._PNG, 'ok', None)
    monkeypatch.setitem(core._PNG, 'renderer', None)
    yield core
    if (r := core._PNG['renderer']) is not None: r.close()


def test_save_figure_without_png_warns_once(tmp_path, monkeypatch, fresh_png):
    monkeypatch.setenv('BROWSER_PATH', str(tmp_path/'nowhere'/'chromium'))  # kaleido's lookup finds nothing there
    fig = confusion([1, 2], [0, 1])
    with pytest.warns(UserWarning, match=r'PNG export is unavailable: no browser at BROWSER_PATH=.*apt-get install chromium'):
        files = save_figure(fig, tmp_path/'a')
    assert [f.name for f in files] == ['a.html'] and not (tmp_path/'a.png').exists()
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no second warning
        assert [f.name for f in save_figure(fig, tmp_path/'b')] == ['b.html']
    assert save_figure(fig, tmp_path/'c', png=False) == [tmp_path/'c.html']
    assert fresh_png._PNG['renderer'] is None  # no renderer was started


def test_no_browser_reasons(tmp_path, monkeypatch):
    from mmvae.core import _no_browser
    monkeypatch.setenv('BROWSER_PATH', str(tmp_path/'chromium'))
    assert _no_browser() == f"no browser at BROWSER_PATH='{tmp_path/'chromium'}'"
    (tmp_path/'chromium').write_text('#!/bin/sh\n'); (tmp_path/'chromium').chmod(0o755)
    assert _no_browser() is None  # something is there: the renderer tries it, within its timeout


# --- model cache ---------------------------------------------------------------------------------------------------

def _no_epoch(*a, **k): raise AssertionError("an epoch ran although the model was cached")


def _entries(folder): return sorted(p.suffix for p in folder.iterdir())


def test_model_cache_hit_loads_without_training_and_is_identical(X, tmp_path, monkeypatch):
    import mmvae.core as core
    m0, h0 = _fit(X, 3, device='cpu')  # no cache
    m1, h1 = _fit(X, 3, device='cpu', cache=tmp_path)  # miss: trains and stores
    assert _entries(tmp_path) == ['.csv', '.json', '.pt']  # no temporary files left behind
    monkeypatch.setattr(core, '_run_epoch', _no_epoch)
    m2, h2 = _fit(X, 3, device='cpu', cache=tmp_path)  # hit: no epoch may run
    pd.testing.assert_frame_equal(h2, h1)
    pd.testing.assert_frame_equal(h1, h0)
    assert h2.attrs['best_epoch'] == h1.attrs['best_epoch'] == h0.attrs['best_epoch'] is not None
    for m in (m1, m2): np.testing.assert_array_equal(embed(m, {'x': X}), embed(m0, {'x': X}))
    for k, v in m0.state_dict().items(): torch.testing.assert_close(m2.state_dict()[k], v, rtol=0, atol=0)
    assert not m2.training
    with pytest.raises(AssertionError, match='cached'): _fit(X, 4, device='cpu', cache=tmp_path)  # another seed trains


def test_model_cache_misses_when_anything_changes(X, tmp_path):
    _fit(X, 0, device='cpu', cache=tmp_path)
    X2 = X.copy(); X2[0, 0] += 1e-3
    _fit(X, 1, device='cpu', cache=tmp_path)  # seed
    _fit(X, 0, device='cpu', cache=tmp_path, epochs=7)  # epochs
    _fit(X2, 0, device='cpu', cache=tmp_path)  # one changed value in the data
    _fit(X, 0, device='cpu', cache=tmp_path, lr=2e-3)  # a training argument
    assert len(list(tmp_path.glob('*.pt'))) == 5
    _fit(X, 0, device='cpu', cache=tmp_path)  # the first one again: a hit, no new entry
    assert len(list(tmp_path.glob('*.pt'))) == 5


def test_training_key_covers_model_data_and_args(X):
    from mmvae.core import training_key
    def model(seed=0, **kw): seed_everything(seed); return MLPVAE(15, latent_dim=2, hidden=(16,), **kw)
    base = training_key(model(), {'x': X}, dict(epochs=3))
    assert training_key(model(), {'x': X}, dict(epochs=3)) == base  # deterministic
    assert training_key(model(), {'x': X.copy()}, {'epochs': 3}) == base  # by content, not identity
    assert training_key(model(1), {'x': X}, dict(epochs=3)) != base  # initial weights
    assert training_key(model(beta=4.), {'x': X}, dict(epochs=3)) != base  # same weights, different loss
    assert training_key(model(), {'x': X}, dict(epochs=4)) != base
    assert training_key(model(), {'x': X.astype(np.float64)}, dict(epochs=3)) != base  # dtype
    assert training_key(model(), {'x2': X}, dict(epochs=3)) != base  # array name
    assert training_key(model(), {'x': X, 'm': np.ones(len(X), bool)}, dict(epochs=3)) != base
    assert training_key(model(), {'m': np.ones(len(X), bool), 'x': X}, dict(epochs=3)) == \
           training_key(model(), {'x': X, 'm': np.ones(len(X), bool)}, dict(epochs=3))  # sorted names


def test_model_cache_generic_and_damaged_entry(X, tmp_path):
    calls = []
    def run(model):
        def fit():
            calls.append(1)
            with torch.no_grad(): model.w.add_(1.)
            h = pd.DataFrame({'epoch': [1, 2], 'train_loss': [0.5, 0.25], 'phase': ['a', 'b']}); h.attrs['best_epoch'] = 2
            return h
        return ModelCache(tmp_path).train(model, {'x': X}, dict(procedure='test'), fit, device='cpu')
    h1 = run(m1 := _MaskedMean())
    h2 = run(m2 := _MaskedMean())
    assert len(calls) == 1 and h2.attrs == {'best_epoch': 2}
    pd.testing.assert_frame_equal(h1, h2)
    torch.testing.assert_close(m2.w.detach(), torch.ones(3))
    next(tmp_path.glob('*.pt')).write_bytes(b'not a checkpoint')
    with pytest.warns(UserWarning, match='unreadable'): run(_MaskedMean())
    assert len(calls) == 2
    run(_MaskedMean()); assert len(calls) == 2  # repaired


def test_embedder_passes_the_cache(X, tmp_path, monkeypatch):
    import mmvae.core as core
    emb = VAEEmbedder(latent_dim=2, hidden=(16,), epochs=4, random_state=1, device='cpu', cache=tmp_path)
    assert clone(emb).get_params()['cache'] == tmp_path  # stored as given, sklearn-style
    Z = emb.fit_transform(X)
    assert len(list(tmp_path.glob('*.pt'))) == 1
    monkeypatch.setattr(core, '_run_epoch', _no_epoch)
    again = clone(emb).fit(X)
    np.testing.assert_array_equal(again.transform(X), Z)
    pd.testing.assert_frame_equal(again.history_, emb.history_)


def test_projection_cache(X, tmp_path, monkeypatch):
    import mmvae.core as core
    xy = project_2d(X, 'tsne', 0, cache=tmp_path)  # miss: computed and stored
    np.testing.assert_array_equal(xy, project_2d(X, 'tsne', 0))  # same as without a cache
    assert [p.suffix for p in tmp_path.iterdir()] == ['.npy']
    def no_projection(*a): raise AssertionError('projected although cached')
    monkeypatch.setattr(core, '_project', no_projection)
    np.testing.assert_array_equal(project_2d(X, 'tsne', 0, cache=tmp_path), xy)  # hit
    for other in ((X, 'tsne', 1), (X, 'pca', 0), (X[:-1], 'tsne', 0)):  # another seed, method or data is computed
        with pytest.raises(AssertionError, match='projected'): project_2d(*other, cache=tmp_path)


def test_save_figure_png_cache(tmp_path, monkeypatch, fresh_png):
    "A figure rendered before is copied from the PNG cache (no kaleido needed); a changed figure is not."
    core = fresh_png
    cache, fig = tmp_path/'png', confusion([1, 2, 2], [0, 1, 1])
    key = hashlib.sha256(fig.to_json().encode()).hexdigest()
    cache.mkdir(); (cache/f'{key}.png').write_bytes(b'rendered before')
    monkeypatch.setitem(core._PNG, 'ok', False)  # PNG export unavailable from here on
    files = save_figure(fig, tmp_path/'a', cache=cache)
    assert [f.name for f in files] == ['a.html', 'a.png'] and files[1].read_bytes() == b'rendered before'
    changed = confusion([1, 2, 2], [0, 0, 1])
    assert [f.name for f in save_figure(changed, tmp_path/'b', cache=cache)] == ['b.html']


def test_damaged_projection_cache_is_recomputed(X, tmp_path):
    xy = project_2d(X, 'pca', 0, cache=tmp_path)
    kept, = tmp_path.glob('*.npy')
    good = kept.read_bytes()
    for damage in (good[:90], b'', b'not an array', None):  # truncated, empty, garbage, another array of the right format
        if damage is None: np.save(kept, np.zeros((3, 2)))
        else: kept.write_bytes(damage)
        with pytest.warns(UserWarning, match=f'projection cache {kept}: damaged'):
            np.testing.assert_array_equal(project_2d(X, 'pca', 0, cache=tmp_path), xy)
        assert kept.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == [kept.name]  # replaced, nothing left over
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        np.testing.assert_array_equal(project_2d(X, 'pca', 0, cache=tmp_path), xy)  # repaired


# --- training in worker processes ----------------------------------------------------------------------------------

def _fit_unless(how):
    "A training procedure that kills its worker for seed 1 (`how`: exit, SIGKILL, SIGSEGV), or just trains ('train')."
    def procedure(model, data, config, seed, device, progress=False):
        if seed == 1 and how == 'exit': os._exit(3)
        if seed == 1 and how != 'train':
            import signal
            os.kill(os.getpid(), getattr(signal, how))  # SIGKILL: what the out-of-memory killer sends; SIGSEGV: a crash
        return fit_model(model, data, config, seed, device, progress)
    procedure.__qualname__ = 'fit_model'  # one cache key whatever the fault: a rerun trains only what is missing
    return procedure


def _jobs(how):
    return {f'seed {s}': TrainJob(MLPVAE, dict(in_dim=4, latent_dim=2, hidden=(8,)), {'x': np.random.default_rng(s).normal(size=(64, 4)).astype(np.float32)},
                                  s, TrainConfig(epochs=2), _fit_unless(how)) for s in range(3)}


_PARALLEL = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_core import _jobs
from mmvae.core import train_parallel
for how in sys.argv[3:]:
    try: r = 'ok: ' + repr(sorted(train_parallel(_jobs(how), sys.argv[2], n_jobs=2)))
    except Exception as e: r = f'{type(e).__name__}: {e}'
    print(json.dumps(r), flush=True)
"""


def test_train_parallel_worker_that_dies_is_a_clear_error(tmp_path):
    "os._exit, SIGKILL (what the out-of-memory killer sends) and a segfault in a worker: an error naming the jobs in flight."
    import json, subprocess, sys
    deaths = {'exit': 'EXIT(3)', 'SIGKILL': 'SIGKILL(-9)', 'SIGSEGV': 'SIGSEGV(-11)'}
    r = subprocess.run([sys.executable, '-c', _PARALLEL, str(Path(__file__).parent), str(tmp_path), *deaths, 'train'],
                       capture_output=True, text=True, timeout=600)  # in a process of its own, bounded: a hang fails here
    assert r.returncode == 0, r.stderr[-3000:]
    *died, rerun = map(json.loads, r.stdout.splitlines())
    for message, (how, code) in zip(died, deaths.items(), strict=True):
        assert message.startswith(f'RuntimeError: train_parallel: a worker process died (exit codes {{{code}}}); the jobs in flight then: '), message
        assert "'seed 1'" in message.split('in flight then: ')[1].split(';')[0]  # the job that killed its worker
        assert 'had finished (they are in the model cache, so a rerun trains only the rest)' in message
    assert rerun == "ok: ['seed 0', 'seed 1', 'seed 2']" and len(list(tmp_path.glob('*.pt'))) == 3  # without the fault: trains what is missing


def test_train_parallel_checks_the_cache_before_dispatch(tmp_path, monkeypatch):
    "Cached jobs never reach a worker: with every job cached no worker pool starts; with one missing, one job trains."
    import mmvae.core as core
    jobs = _jobs('train')
    first = core.train_parallel(jobs, tmp_path, n_jobs=2)
    dispatched = []
    monkeypatch.setattr(core, '_train_in_workers', lambda todo, *a: dispatched.append(sorted(todo)))
    again = core.train_parallel(jobs, tmp_path, n_jobs=2)
    assert dispatched == [] and list(again) == list(jobs)
    for name in jobs: pd.testing.assert_frame_equal(again[name][1], first[name][1])
    other_seed = TrainJob(MLPVAE, jobs['seed 0'].kwargs, jobs['seed 0'].data, 7, TrainConfig(epochs=2), jobs['seed 0'].procedure)
    assert not ModelCache(tmp_path).has(other_seed.key('cpu')) and ModelCache(tmp_path).has(jobs['seed 0'].key('cpu'))


def test_job_marks_of_killed_callers_are_swept():
    import subprocess, sys, tempfile
    from mmvae.core import _sweep_job_marks
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True).stdout.strip()
    dead, alive = (Path(tempfile.mkdtemp(prefix=f'mmvae-jobs-{pid}-')) for pid in (gone, os.getpid()))
    _sweep_job_marks()
    assert not dead.exists() and alive.is_dir()
    alive.rmdir()


def _divide(model, data, config, seed, device, progress=False):
    return fit_model(model, data, config, seed, device) if seed else 1 / seed  # seed 0: ZeroDivisionError in its worker


def test_train_parallel_names_the_job_of_an_exception(tmp_path):
    from mmvae.core import train_parallel
    jobs = {name: TrainJob(MLPVAE, dict(in_dim=4), {'x': np.zeros((8, 4), np.float32)}, seed, procedure=_divide) for name, seed in (('a', 1), ('b', 0))}
    with pytest.raises(ZeroDivisionError) as e: train_parallel(jobs, tmp_path, n_jobs=2)
    assert "in train_parallel job 'b'" in getattr(e.value, '__notes__', [])
