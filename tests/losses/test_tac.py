"""TAC losses and text construction against the official code's golden cases, plus properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from golden import DTYPES, Case, cuda_only, golden_cases, grad_of, on_cuda_like_cpu, single_thread  # noqa: F401

from mlcd.losses.tac import (
    TACObjective,
    balance_entropy,
    tac_confidence_loss,
    tac_distill_loss,
    tac_objective,
    tac_objective_heads,
    tac_retrieve_text,
    tac_select_nouns,
)


# ------------------------------------------------------------------ golden cases
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entry", golden_cases("tac_balance_entropy"))
def test_balance_entropy_golden(entry, dtype):
    case = Case(entry)
    ours = {}
    # each B x K input p<suffix> gives value<suffix> and grad_p<suffix>
    for name in [n for n, spec in case.entry["inputs"].items() if len(spec["shape"]) == 2]:
        suffix = name[1:]
        p = case.t(name, dtype, grad=True)
        value = balance_entropy(p)
        assert value.dtype == dtype
        ours["value" + suffix] = value
        (ours["grad_" + name],) = grad_of(value, p)
    case.check_all(ours)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entry", golden_cases("tac_confidence"))
def test_confidence_golden(entry, dtype):
    case = Case(entry)
    p_a, p_b = case.t("p_a", dtype, grad=True), case.t("p_b", dtype, grad=True)
    value = tac_confidence_loss(p_a, p_b)
    assert value.dtype == dtype
    ga, gb = grad_of(value, p_a, p_b)
    case.check_all({"value": value, "grad_p_a": ga, "grad_p_b": gb})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entry", golden_cases("tac_distill"))
def test_distill_golden(entry, dtype):
    case = Case(entry)
    p_a, p_b = case.t("p_a", dtype, grad=True), case.t("p_b", dtype, grad=True)
    value = tac_distill_loss(p_a, p_b, case.hp("temperature"))
    assert value.dtype == dtype
    ga, gb = grad_of(value, p_a, p_b)
    case.check_all({"value": value, "grad_p_a": ga, "grad_p_b": gb})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entry", golden_cases("tac_objective"))
def test_objective_golden(entry, dtype):
    case = Case(entry)
    names = ("p_text", "p_image", "p_text_nbr", "p_image_nbr")
    ins = [case.t(n, dtype, grad=True) for n in names]
    out = tac_objective(*ins, temperature=case.hp("temperature"), alpha=case.hp("alpha"))
    assert isinstance(out, TACObjective)
    total, distill, consistency, entropy = out  # unpacks as a tuple
    assert total.dtype == dtype
    ours = {
        "value": total,
        "loss_distill": distill,
        "loss_consist": consistency,
        "loss_entropy": entropy,
    }
    for n, g in zip(names, grad_of(total, *ins)):
        ours["grad_" + n] = g
    if case.has("value_t5") or case.has("loss_distill_t5"):
        alt = tac_objective(*ins, temperature=case.hp("temperature_alt"), alpha=case.hp("alpha"))
        ours["value_t5"], ours["loss_distill_t5"] = alt.total, alt.distill
    case.check_all(ours)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entry", golden_cases("tac_retrieve_text"))
def test_select_and_retrieve_golden(entry, dtype):
    case = Case(entry)
    images = case.t("image_feats", dtype)
    nouns = case.t("all_noun_feats", dtype)
    assign = case.t("cluster_assignments")
    k = int(case.hp("k"))
    gamma = int(case.hp("gamma", 5))
    mask, centre, conf = tac_select_nouns(
        images, assign, nouns, gamma=gamma, n_clusters=k, return_details=True
    )
    assert mask.dtype == torch.bool and centre.dtype == torch.int64
    ours = {
        "selected": mask,
        "selected_idx": torch.nonzero(mask).flatten(),
        "noun_center": centre,
        "noun_confidence": conf,
    }
    if case.has("selected_gamma10"):
        ours["selected_gamma10"] = tac_select_nouns(
            images, assign, nouns, gamma=int(case.hp("gamma_alt")), n_clusters=k
        )
    # the retrieval's input is the kept nouns, in index order
    kept = case.t("noun_feats", dtype)
    torch.testing.assert_close(nouns[mask], kept, rtol=0, atol=0)
    text = tac_retrieve_text(images, kept, tau=case.hp("tau"))
    assert text.dtype == dtype
    ours["text_counterpart"] = text
    if case.has("text_counterpart_tau0p05"):
        ours["text_counterpart_tau0p05"] = tac_retrieve_text(images, kept, tau=case.hp("tau_alt"))
    case.check_all(ours)


# -------------------------------------------------------------------- properties
def _softmax(b, k, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(b, k, generator=g, dtype=dtype), dim=1)


def test_gradcheck_float64():
    ins = [_softmax(12, 4, s).requires_grad_() for s in range(4)]
    assert torch.autograd.gradcheck(lambda *p: tac_objective(*p, temperature=0.5).total, ins)
    assert torch.autograd.gradcheck(lambda a, b: tac_distill_loss(a, b, 5.0), ins[:2])


def test_distill_symmetric_and_cluster_permutation_invariant():
    a, b = _softmax(64, 6, 0), _softmax(64, 6, 1)
    v = tac_distill_loss(a, b, 0.5)
    torch.testing.assert_close(tac_distill_loss(b, a, 0.5), v)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tac_distill_loss(a[:, perm], b[:, perm], 0.5), v)
    # rows (samples) can be reordered too, consistently in both views
    rows = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(tac_distill_loss(a[rows], b[rows], 0.5), v)


def test_distill_and_confidence_reach_their_optimum_on_identical_one_hot_views():
    k = 5
    p = F.one_hot(torch.arange(40) % k, k).double()
    # columns orthogonal; each column's only positive is itself in the other view
    expected = math.log(math.exp(1 / 0.5) + (2 * k - 2)) - 1 / 0.5
    assert tac_distill_loss(p, p, 0.5).item() == pytest.approx(expected, rel=1e-12)
    assert tac_confidence_loss(p, p).item() == pytest.approx(0.0, abs=1e-12)


def test_balance_entropy_uniform_and_empty_cluster():
    k = 7
    p = torch.full((10, k), 1.0 / k, dtype=torch.float64)
    assert balance_entropy(p).item() == pytest.approx(math.log(k), rel=1e-12)
    q = _softmax(20, 4, 3)
    q[:, 2] = 0
    q.requires_grad_()
    v = balance_entropy(q)
    (g,) = torch.autograd.grad(v, q)
    assert torch.isfinite(v) and torch.all(g[:, 2] == 0) and torch.isfinite(g).all()


def test_confidence_handles_rounding_above_one_and_zero_overlap():
    p = F.one_hot(torch.tensor([0, 1]), 2).double()
    over = p * (1 + 1e-15)
    assert torch.isfinite(tac_confidence_loss(over, p))
    # disjoint assignments: log clamped at -100 as BCE does
    assert tac_confidence_loss(p, p.flip(1)).item() == pytest.approx(100.0)


def test_objective_parts_add_up():
    ins = [_softmax(32, 5, s) for s in range(4)]
    out = tac_objective(*ins, temperature=0.5, alpha=3.0)
    torch.testing.assert_close(out.total, out.distill + out.consistency - 3.0 * out.entropy)
    torch.testing.assert_close(
        out.distill, tac_distill_loss(ins[1], ins[2], 0.5) + tac_distill_loss(ins[0], ins[3], 0.5)
    )


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        tac_distill_loss(torch.rand(4, 3), torch.rand(4, 2), 0.5)
    with pytest.raises(ValueError, match="2-D"):
        balance_entropy(torch.rand(4))


# ------------------------------------------------------------- noun filtering
def _toy_space(seed=0, n=300, m=120, d=16, k=6):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    nouns = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    assign = torch.randint(0, k, (n,), generator=g)
    return images, assign, nouns, k


def _select_reference(images, assign, nouns, k, gamma):
    """Straight loop over centres, as filter_nouns.py does it."""
    centres = F.normalize(torch.stack([images[assign == c].mean(0) for c in range(k)]), dim=1)
    prob = torch.softmax(centres @ nouns.t(), dim=0)
    conf, cls = prob.max(0)
    keep = torch.zeros(len(nouns), dtype=torch.bool)
    for c in range(k):
        idx = torch.where(cls == c)[0]
        keep[idx[torch.argsort(conf[idx], descending=True, stable=True)[:gamma]]] = True
    return keep


@pytest.mark.parametrize("gamma", [1, 3, 50])
def test_select_nouns_matches_a_plain_loop(gamma):
    images, assign, nouns, k = _toy_space()
    got = tac_select_nouns(images, assign, nouns, gamma=gamma)
    assert torch.equal(got, _select_reference(images, assign, nouns, k, gamma))
    # float32 input, chunked similarity: same decisions (computed in float64)
    got32 = tac_select_nouns(images.float(), assign, nouns.float(), gamma=gamma, chunk_size=7 * k)
    assert torch.equal(got32, _select_reference(images.float().double(), assign, nouns.float().double(), k, gamma))


def test_select_nouns_is_invariant_to_feature_scale_and_keeps_at_most_gamma_per_centre():
    images, assign, nouns, k = _toy_space(1)
    mask, centre, _ = tac_select_nouns(images, assign, nouns, gamma=4, return_details=True)
    assert torch.equal(tac_select_nouns(3 * images, assign, 0.5 * nouns, gamma=4), mask)
    per_centre = torch.bincount(centre[mask], minlength=k)
    assert int(per_centre.max()) <= 4
    assert torch.equal(per_centre, torch.bincount(centre, minlength=k).clamp(max=4))


def test_select_nouns_ignores_empty_centres():
    images, assign, nouns, k = _toy_space(2)
    assign = torch.where(assign == 2, torch.tensor(0), assign)  # centre 2 has no image
    mask, centre, conf = tac_select_nouns(images, assign, nouns, gamma=3, n_clusters=k, return_details=True)
    assert torch.isfinite(conf).all() and not (centre == 2).any()
    assert torch.equal(mask, _select_reference_skip(images, assign, nouns, k, 3, empty=2))


def _select_reference_skip(images, assign, nouns, k, gamma, empty):
    live = [c for c in range(k) if c != empty]
    remap = torch.tensor([live.index(c) if c in live else 0 for c in range(k)])
    return _select_reference(images, remap[assign], nouns, len(live), gamma)


def test_select_nouns_errors():
    images, assign, nouns, k = _toy_space()
    with pytest.raises(ValueError, match="entries"):
        tac_select_nouns(images, assign[:-1], nouns)
    with pytest.raises(ValueError, match="n_clusters"):
        tac_select_nouns(images, assign, nouns, n_clusters=k - 1)
    with pytest.raises(ValueError, match="width"):
        tac_select_nouns(images, assign, nouns[:, :-1])


# ------------------------------------------------------------------- retrieval
def test_retrieve_text_formula_blocks_and_limits():
    images, _, nouns, _ = _toy_space(3)
    tau = 0.05
    expected = F.normalize(torch.softmax(images @ nouns.t() / tau, dim=1) @ nouns, dim=1)
    got = tac_retrieve_text(5 * images, 2 * nouns, tau=tau, batch_size=7)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got.dtype == torch.float64
    # tiny tau: the nearest noun itself; large tau: the normalised mean noun
    top2 = (images @ nouns.t()).topk(2, dim=1)
    clear = (top2.values[:, 0] - top2.values[:, 1]) > 0.01  # rows without a near tie
    nearest = nouns[top2.indices[:, 0]]
    got = tac_retrieve_text(images, nouns, tau=1e-4)
    torch.testing.assert_close(got[clear], nearest[clear], rtol=0, atol=1e-12)
    assert clear.float().mean() > 0.8
    mean = F.normalize(nouns.mean(0, keepdim=True), dim=1).expand_as(images)
    torch.testing.assert_close(tac_retrieve_text(images, nouns, tau=1e6), mean, rtol=0, atol=1e-5)
    # float16 input is promoted, not computed in half precision
    assert tac_retrieve_text(images.half(), nouns.half()).dtype == torch.float32


def test_retrieve_text_errors():
    images, _, nouns, _ = _toy_space()
    with pytest.raises(ValueError, match="empty"):
        tac_retrieve_text(images, nouns[:0])
    with pytest.raises(ValueError, match="tau"):
        tac_retrieve_text(images, nouns, tau=0)


@cuda_only
def test_device_follows_inputs():
    ins = [_softmax(32, 5, s) for s in range(4)]
    on_cuda_like_cpu(lambda *p: tuple(tac_objective(*p)), *ins)
    images, assign, nouns, _k = _toy_space(4)
    on_cuda_like_cpu(lambda a, b, c: tac_select_nouns(a, b, c, gamma=3, return_details=True), images, assign, nouns)
    on_cuda_like_cpu(tac_retrieve_text, images, nouns, 0.05)


def test_objective_heads_matches_one_call_per_pair():
    """The batched objective equals one tac_objective call per head pair, values and gradients."""
    torch.manual_seed(0)
    ps = [torch.softmax(3 * torch.randn(3, 50, 7, dtype=torch.float64), 2).requires_grad_() for _ in range(4)]
    got = tac_objective_heads(*ps, temperature=0.7, alpha=3.0)
    want = torch.stack([tac_objective(*(p[j] for p in ps), 0.7, 3.0).total for j in range(3)])
    assert got.shape == (3,)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), ps), torch.autograd.grad(want.sum(), ps)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"\[H, B, K\]"):
        tac_objective_heads(*(p[0] for p in ps))
