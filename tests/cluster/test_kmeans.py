"""mlcd.cluster.KMeans against scikit-learn and faiss, across backends and input kinds."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
from _cluster_testutil import FakeStore, blobs
from sklearn.cluster import KMeans as SKKMeans

from mlcd.cluster import KMeans


@pytest.fixture(scope="module")
def data():
    return blobs(2000, 16, 25, seed=1, spread=2.0)


def _init(x, k, **kw):
    return KMeans(k, n_iter=0, verbose=False, **kw).fit(x).cluster_centers_


def _inertia(x, centers):
    d = ((x[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1)
    return float(d.min(1).sum())


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_matches_sklearn_same_init(data, backend):
    k, n_iter = 20, 8
    init = _init(data, k)
    ours = KMeans(k, n_iter=n_iter, init=init, backend=backend, device="cpu", verbose=False).fit(data)
    sk = SKKMeans(k, init=init, n_init=1, max_iter=n_iter, tol=0.0, algorithm="lloyd").fit(data)
    assert abs(ours.inertia_ - sk.inertia_) <= 0.01 * sk.inertia_
    # same init and iterations: the same centers, up to float noise
    assert abs(ours.inertia_ - sk.inertia_) <= 1e-4 * sk.inertia_
    np.testing.assert_allclose(ours.cluster_centers_, sk.cluster_centers_, atol=1e-4)
    assert (ours.labels_ == sk.labels_).mean() > 0.999
    assert ours.inertia_ == pytest.approx(_inertia(data, ours.cluster_centers_), rel=1e-6)


def test_matches_bare_faiss_same_init(data):
    k, n_iter = 20, 8
    init = _init(data, k)
    ours = KMeans(k, n_iter=n_iter, init=init, verbose=False).fit(data)
    fk = faiss.Kmeans(data.shape[1], k, niter=n_iter, seed=0, max_points_per_centroid=10**6, min_points_per_centroid=1)
    fk.train(data, init_centroids=init)
    faiss_inertia = _inertia(data, fk.centroids)
    assert abs(ours.inertia_ - faiss_inertia) <= 0.01 * faiss_inertia
    np.testing.assert_allclose(ours.cluster_centers_, fk.centroids, atol=1e-4)


def test_spherical_matches_faiss_spherical(data):
    k, n_iter = 15, 6
    xn = data / np.linalg.norm(data, axis=1, keepdims=True)
    init = _init(data, k, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(init, axis=1), 1.0, atol=1e-5)
    ours = KMeans(k, n_iter=n_iter, init=init, spherical=True, verbose=False).fit(data)
    fk = faiss.Kmeans(
        data.shape[1], k, niter=n_iter, spherical=True, max_points_per_centroid=10**6, min_points_per_centroid=1
    )
    fk.train(np.ascontiguousarray(xn), init_centroids=init)
    np.testing.assert_allclose(ours.cluster_centers_, fk.centroids, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(ours.cluster_centers_, axis=1), 1.0, atol=1e-5)
    # the objective is sum ||x/|x| - c||^2 = sum (2 - 2 cos)
    cos = (xn @ ours.cluster_centers_.T).max(1)
    assert ours.inertia_ == pytest.approx(float((2 - 2 * cos.astype(np.float64)).sum()), rel=1e-4)


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("init", ["k-means++", "two-level", "random"])
def test_torch_backend_equals_faiss_backend(data, init, spherical):
    kw = dict(n_iter=6, init=init, spherical=spherical, seed=3, device="cpu", verbose=False)
    a = KMeans(30, backend="faiss", **kw).fit(data)
    b = KMeans(30, backend="torch", **kw).fit(data)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, atol=1e-5)
    assert (a.labels_ == b.labels_).mean() > 0.999
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-6)
    assert a.backend_ == "faiss" and b.backend_ == "torch"


def test_torch_backend_small_tiles_and_bf16(data):
    """Tiling over rows and centers does not change the result; bf16 products stay close."""
    from mlcd.cluster import _scoring

    c = torch.from_numpy(_init(data, 40))
    x = torch.from_numpy(data)
    ref = _scoring.TorchScorer(c, spherical=False).top1(x)
    tiled = _scoring.TorchScorer(c, spherical=False, row_tile=37, center_tile=7).top1(x)
    assert torch.equal(ref, tiled)
    exact = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    assert (ref == exact).float().mean() > 0.999
    km = KMeans(40, n_iter=5, backend="torch", device="cpu", precision="bf16", verbose=False).fit(data)
    km32 = KMeans(40, n_iter=5, backend="torch", device="cpu", verbose=False).fit(data)
    assert km.inertia_ == pytest.approx(km32.inertia_, rel=1e-2)


def test_init_choices(data):
    assert KMeans(10, n_iter=0, verbose=False).fit(data).init_ == "k-means++"
    assert KMeans(1100, n_iter=0, verbose=False).fit(data).init_ == "two-level"
    for init in ("k-means++", "random", "two-level"):
        km = KMeans(25, n_iter=0, init=init, verbose=False).fit(data)
        c = km.cluster_centers_
        assert c.shape == (25, 16) and np.isfinite(c).all()
        assert len(np.unique(c.round(5), axis=0)) == 25
    # seeding quality on well-separated blobs: k-means++ and two-level beat random on average,
    # and a few Lloyd iterations from any seeding end near the best objective
    kpp = KMeans(25, n_iter=0, init="k-means++", verbose=False).fit(data).inertia_
    rnd = KMeans(25, n_iter=0, init="random", verbose=False).fit(data).inertia_
    assert kpp < rnd


def test_two_level_allocation():
    from mlcd.cluster._init import allocate

    a = allocate(10, np.array([50, 30, 20]))
    assert a.tolist() == [5, 3, 2]
    a = allocate(7, np.array([1, 1, 1, 1, 1, 1, 1]))
    assert a.tolist() == [1] * 7
    a = allocate(100, np.array([3, 97, 0, 1]))
    assert a.sum() == 100 and (a <= [3, 97, 0, 1]).all()
    rng = np.random.default_rng(0)
    for _ in range(50):
        sizes = rng.integers(0, 20, size=rng.integers(1, 30))
        if sizes.sum() == 0:
            continue
        k = int(rng.integers(1, sizes.sum() + 1))
        a = allocate(k, sizes)
        assert a.sum() == k and (a <= sizes).all() and (a >= 0).all()


def test_same_seed_same_result_and_seed_matters(data):
    a = KMeans(12, n_iter=4, seed=5, verbose=False).fit(data)
    b = KMeans(12, n_iter=4, seed=5, verbose=False).fit(data)
    c = KMeans(12, n_iter=4, seed=6, verbose=False).fit(data)
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)


def test_empty_cluster_repair():
    x = blobs(600, 4, 6, seed=2)
    init = x[:8].copy()
    init[3] = 1e4  # far from every row: empty after the first assignment
    init[6] = -1e4
    km = KMeans(8, n_iter=10, init=init, verbose=False).fit(x)
    assert km.n_empty_repairs_ >= 2
    assert (km.cluster_sizes_ > 0).all()
    assert km.cluster_sizes_.sum() == 600
    assert np.abs(km.cluster_centers_).max() < 100
    tk = KMeans(8, n_iter=10, init=init, backend="torch", device="cpu", verbose=False).fit(x)
    np.testing.assert_allclose(km.cluster_centers_, tk.cluster_centers_, atol=1e-5)
    assert tk.n_empty_repairs_ == km.n_empty_repairs_


def test_repair_splits_largest_cluster():
    from mlcd.cluster._init import update_centers

    sums = torch.tensor([[10.0, 0.0], [0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    counts = torch.tensor([10.0, 0.0, 3.0], dtype=torch.float64)
    sse = torch.tensor([40.0, 0.0, 3.0], dtype=torch.float64)
    old = torch.zeros(3, 2)
    new, rep = update_centers(sums, counts, sse, old, spherical=False, rng=np.random.default_rng(0))
    assert rep == 1
    # cluster 0 (the largest) is split symmetrically about its mean (1, 0), by a tenth of its RMS radius (2)
    mid = (new[0] + new[1]) / 2
    np.testing.assert_allclose(mid.numpy(), [1.0, 0.0], atol=1e-6)
    assert float((new[0] - new[1]).norm()) == pytest.approx(0.4, rel=1e-5)
    np.testing.assert_allclose(new[2].numpy(), [1.0, 1.0], atol=1e-6)


def test_identical_points_cannot_be_split():
    x = np.zeros((10, 3), dtype=np.float32)
    x[5:] = 1.0
    km = KMeans(3, n_iter=3, verbose=False).fit(x)  # only 2 distinct points
    assert (km.cluster_sizes_ > 0).sum() == 2
    assert km.inertia_ == 0.0


def test_tensor_input_and_stream_input_equal_numpy(data):
    kw = dict(n_iter=5, seed=1, verbose=False)
    ref = KMeans(10, **kw).fit(data.astype(np.float16).astype(np.float32))
    st = FakeStore(data, max_batch=128)  # float16 rows, 16 batches per pass
    km = KMeans(10, batch_size=300, **kw).fit(st)
    np.testing.assert_allclose(km.cluster_centers_, ref.cluster_centers_, atol=1e-5)
    assert np.array_equal(km.labels_, ref.labels_)
    assert st.passes == 1 + 5 + 1  # scan + iterations + final assignment
    t = torch.from_numpy(data.astype(np.float16).astype(np.float32))
    kt = KMeans(10, **kw).fit(t)
    assert kt.backend_ == "faiss" and kt.device_ == "cpu"  # CPU tensors go to faiss too
    np.testing.assert_allclose(kt.cluster_centers_, ref.cluster_centers_, atol=1e-5)
    # integer input is accepted and converted
    xi = np.rint(data * 10).astype(np.int32)
    assert KMeans(5, n_iter=2, verbose=False).fit(xi).cluster_centers_.dtype == np.float32


def test_predict_transform_score(data):
    km = KMeans(8, n_iter=5, verbose=False).fit(data)
    assert np.array_equal(km.predict(data), km.labels_)
    assert np.array_equal(km.fit_predict(data), km.labels_)
    d = km.transform(data[:50])
    ref = np.sqrt(((data[:50, None].astype(np.float64) - km.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-4)
    assert km.score(data) == pytest.approx(-km.inertia_, rel=1e-6)
    sp = KMeans(8, n_iter=3, spherical=True, verbose=False).fit(data)
    s = sp.transform(data[:20])
    xn = data[:20] / np.linalg.norm(data[:20], axis=1, keepdims=True)
    np.testing.assert_allclose(s, xn @ sp.cluster_centers_.T, atol=1e-5)
    assert np.array_equal(s.argmax(1), sp.labels_[:20])


def test_progress_and_quiet(data, capsys):
    KMeans(5, n_iter=2, verbose=False).fit(data)
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""
    KMeans(5, n_iter=2, verbose=True).fit(data)
    err = capsys.readouterr().err
    assert "k-means K=5" in err and "objective" in err and "repairs" in err


def test_early_stop_on_exact_convergence():
    x = blobs(300, 3, 3, seed=0, spread=20.0)
    km = KMeans(3, n_iter=50, verbose=False).fit(x)
    assert km.n_iter_ < 50
    assert len(km.objective_history_) == km.n_iter_
    assert all(a >= b - 1e-6 * a for a, b in zip(km.objective_history_, km.objective_history_[1:]))


def test_nonfinite_rows_dropped(data):
    x = data.copy()
    x[[3, 50, 51]] = np.nan
    x[7, 2] = np.inf
    km = KMeans(6, n_iter=4, drop_nonfinite=True, verbose=False).fit(x)
    assert km.n_nonfinite_ == 4
    assert (km.labels_[[3, 7, 50, 51]] == -1).all()
    assert (np.delete(km.labels_, [3, 7, 50, 51]) >= 0).all()
    assert km.cluster_sizes_.sum() == len(x) - 4
    assert (km.predict(x)[[3, 7]] == -1).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_cuda_matches_cpu(data, precision):
    kw = dict(n_iter=6, seed=2, verbose=False)
    cpu = KMeans(20, device="cpu", **kw).fit(data)
    gpu = KMeans(20, device="cuda", precision=precision, **kw).fit(data)
    assert gpu.backend_ == "torch" and gpu.device_.startswith("cuda")
    assert gpu.inertia_ == pytest.approx(cpu.inertia_, rel=1e-3 if precision == "bf16" else 1e-5)
    gt = KMeans(20, **kw).fit(torch.from_numpy(data).cuda())
    assert gt.device_.startswith("cuda")
    assert gt.inertia_ == pytest.approx(cpu.inertia_, rel=1e-3)


def test_centers_folder_round_trip(data, tmp_path):
    from mlcd.cluster import load_centers

    km = KMeans(7, n_iter=3, spherical=True, verbose=False).fit(data)
    km.save(tmp_path / "c")
    c, meta = load_centers(tmp_path / "c")
    np.testing.assert_array_equal(c, km.cluster_centers_)
    assert meta["k"] == 7 and meta["dim"] == 16 and meta["spherical"] is True
    assert meta["inertia"] == pytest.approx(km.inertia_) and meta["iterations"] == km.n_iter_
    assert meta["repairs"] == km.n_empty_repairs_ and meta["sizes"] == km.cluster_sizes_.tolist()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["centers.json", "centers.npy"]
    loaded = KMeans.load(tmp_path / "c", verbose=False)
    assert loaded.spherical is True
    np.testing.assert_array_equal(loaded.predict(data), km.labels_)


@pytest.mark.parametrize("k", [7, 3000])  # every center present / fewer rows than centers
def test_center_stats_equal_row_by_row_float64_whatever_the_batches(k, monkeypatch):
    """The CPU totals add rows in row order exactly as index_add_ does, so batch and chunk sizes change nothing."""
    from mlcd.cluster._init import CenterStats

    monkeypatch.setattr(CenterStats, "_CHUNK_FLOATS", 1)  # the smallest chunks (1024 rows)
    rng = np.random.default_rng(0)
    n, d = 2500, 12
    x = (rng.standard_normal((n, d)) * 0.5 + 30).astype(np.float32)  # far from the origin
    lab = rng.integers(k, size=n)
    xt, lt = torch.from_numpy(x), torch.from_numpy(lab)
    c = torch.from_numpy((rng.standard_normal((k, d)) * 0.5 + 30).astype(np.float32))
    ref_sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, lt, xt.double())
    ref_sse = torch.zeros(k, dtype=torch.float64).index_add_(0, lt, ((xt.double() - c.double()[lt]) ** 2).sum(1))
    for bs in (n, 999, 64):
        st = CenterStats(k, d, torch.device("cpu"))
        for s in range(0, n, bs):
            st.add(xt[s : s + bs], lt[s : s + bs])
        assert torch.equal(st.sums, ref_sums)
        assert torch.equal(st.counts, torch.bincount(lt, minlength=k).double())
        # sum |x|^2 - 2 c.sum x + n |c|^2 in float64: far more exact than a float32 distance
        torch.testing.assert_close(st.sse(c), ref_sse, rtol=1e-10, atol=1e-9)


def test_two_level_first_level_trains_on_capped_subsample(data, monkeypatch):
    """The coarse level sees at most cap * round(sqrt(K)) rows; the second level sees every row."""
    from mlcd.cluster import _init

    calls = {"kpp": [], "lloyd": [], "second": 0}
    kpp, lloyd, rnd, fgk = _init.kmeans_plusplus, _init.lloyd_in_memory, _init.random_init, _init._faiss_group_kmeans

    def count_kpp(x, k, rng, *a, **kw):
        calls["kpp"].append(x.shape[0])
        return kpp(x, k, rng, *a, **kw)

    def count_lloyd(x, c, *a, **kw):
        calls["lloyd"].append(x.shape[0])
        return lloyd(x, c, *a, **kw)

    def count_random(x, k, rng):  # not used by the second level on the CPU (faiss)
        calls["second"] += x.shape[0]
        return rnd(x, k, rng)

    def count_faiss(x, k, *a):  # called once per second-level group with k > 1, on all its rows
        calls["second"] += x.shape[0]
        return fgk(x, k, *a)

    def count_mean(x, *a, **kw):  # a group given one center: its mean
        calls["second"] += x.shape[0]
        return x.double().mean(dim=0, keepdim=True).float()

    monkeypatch.setattr(_init, "kmeans_plusplus", count_kpp)
    monkeypatch.setattr(_init, "lloyd_in_memory", count_lloyd)
    monkeypatch.setattr(_init, "random_init", count_random)
    monkeypatch.setattr(_init, "_faiss_group_kmeans", count_faiss)
    monkeypatch.setattr(_init, "COARSE_MAX_POINTS_PER_CENTER", 40)
    k, k1 = 100, 10  # 400 coarse training rows of 2000
    fit = lambda seed: KMeans(k, n_iter=0, init="two-level", seed=seed, verbose=False).fit(data)  # noqa: E731
    a = fit(3)
    assert calls["kpp"] == [40 * k1] and calls["lloyd"] == [40 * k1]  # the second level runs in faiss
    assert calls["second"] == len(data)  # every sampled row reached a group of the second level
    c = a.cluster_centers_
    assert c.shape == (k, 16) and np.isfinite(c).all() and len(np.unique(c.round(5), axis=0)) == k
    # deterministic for a seed, and the subsample depends on it
    assert np.array_equal(fit(3).cluster_centers_, c)
    assert not np.array_equal(fit(4).cluster_centers_, c)
    # a cap above the sample size trains the first level on every row (and draws no subsample)
    calls["kpp"].clear()
    monkeypatch.setattr(_init, "COARSE_MAX_POINTS_PER_CENTER", 2000)
    fit(3)
    assert calls["kpp"] == [len(data)]


def test_two_level_coarse_cap_default_matches_faiss():
    import inspect

    from faiss.contrib import clustering

    from mlcd.cluster._init import COARSE_MAX_POINTS_PER_CENTER

    assert f"max_points_per_centroid={COARSE_MAX_POINTS_PER_CENTER}" in inspect.getsource(clustering.two_level_clustering)


def test_two_level_second_level_faiss_on_cpu(monkeypatch):
    """On the CPU every second-level group with k_g > 1 is one faiss.Kmeans run on all its rows,
    seeded from the seed: same seed, same centers; small groups (k_g == rows, k_g == 1) work;
    spherical centers stay on the sphere; torch's Lloyd is not used for the second level."""
    import faiss

    from mlcd.cluster import _init
    from mlcd.cluster._scoring import make_scorer

    rng0 = np.random.default_rng(7)
    # uneven blobs, so some groups are small and get as many centers as rows (or one)
    x = np.concatenate([rng0.normal(c, 0.3, size=(m, 8)) for c, m in zip(range(6), (900, 300, 40, 9, 3, 1))])
    x = torch.from_numpy(x.astype(np.float32))
    trained = []
    original = faiss.Kmeans

    class Spy(original):
        def train(self, xt, *a, **kw):
            trained.append((xt.shape[0], self.k, self.cp.niter, self.cp.seed, self.cp.spherical, self.cp.max_points_per_centroid))
            return super().train(xt, *a, **kw)

    monkeypatch.setattr(faiss, "Kmeans", Spy)
    lloyd_rows = []
    lloyd = _init.lloyd_in_memory
    monkeypatch.setattr(_init, "lloyd_in_memory", lambda xx, *a, **kw: (lloyd_rows.append(xx.shape[0]), lloyd(xx, *a, **kw))[1])

    for spherical in (False, True):
        xs = torch.nn.functional.normalize(x, dim=1) if spherical else x
        def run(seed):
            trained.clear(); lloyd_rows.clear()
            return _init.two_level_init(
                xs, 60, np.random.default_rng(seed), make_scorer=lambda c: make_scorer(c, backend="faiss", spherical=spherical),
                spherical=spherical, n_iter=5,
            )
        a = run(3)
        runs = list(trained)
        assert a.shape == (60, 8) and torch.isfinite(a).all()
        assert len(lloyd_rows) == 1  # the first level only
        assert runs and all(r[2] == 5 and r[4] == spherical for r in runs)
        assert all(r[0] <= r[1] * r[5] for r in runs)  # max_points_per_centroid: no subsampling
        assert any(r[0] < 39 * r[1] for r in runs)  # below faiss' default min_points_per_centroid
        if spherical:
            torch.testing.assert_close(a.norm(dim=1), torch.ones(60), atol=1e-5, rtol=0)
        assert torch.equal(run(3), a)  # deterministic for a seed
        assert [r[3] for r in trained] == [r[3] for r in runs]
        assert not torch.equal(run(4), a)

    # a group with as many centers as rows, and one with a few rows per center: no error, no warning
    for rows, kg in ((5, 5), (12, 4)):
        c = _init._faiss_group_kmeans(x[:rows], kg, 5, 11, False)
        assert c.shape == (kg, 8) and torch.isfinite(c).all()
        if rows == kg:
            assert torch.equal(c[torch.argsort(c[:, 0])], x[:rows][torch.argsort(x[:rows, 0])])
