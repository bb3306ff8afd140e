"""gIoU / cIoU against a naive per-pixel reference of LISA's formula (docs/LISA.md §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modlisa.metrics import IoUAccumulator, intersection_union, query_iou


def naive_iu(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel loop: LISA sets the prediction to 255 where gt is 255, then counts class-1 pixels."""
    inter = area_pred = area_gt = 0
    for r in range(gt.shape[0]):
        for c in range(gt.shape[1]):
            t = int(gt[r, c])
            o = 255 if t == 255 else int(pred[r, c])
            inter += int(o == t == 1)
            area_pred += int(o == 1)
            area_gt += int(t == 1)
    return inter, area_pred + area_gt - inter


def naive_metrics(queries: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    ious, sum_i, sum_u = [], 0, 0
    for pred, gt in queries:
        i, u = naive_iu(pred, gt)
        ious.append(1.0 if u == 0 else i / (u + 1e-5))
        sum_i += i
        sum_u += u
    return sum(ious) / len(ious), sum_i / (sum_u + 1e-10)


def random_query(rng: np.random.Generator, h: int = 7, w: int = 9) -> tuple[np.ndarray, np.ndarray]:
    pred = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    gt = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    gt[rng.random((h, w)) < 0.2] = 255
    return pred, gt


def test_intersection_union_matches_naive_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        pred, gt = random_query(rng)
        expected = naive_iu(pred, gt)
        assert intersection_union(pred, gt) == expected
        assert intersection_union(pred.astype(bool), gt) == expected
        assert intersection_union(torch.from_numpy(pred), torch.from_numpy(gt)) == expected
        assert intersection_union(torch.from_numpy(pred).bool(), gt) == expected


def test_ignore_pixels_removed_from_prediction_and_gt() -> None:
    pred = np.array([[1, 1, 0, 1]], dtype=np.uint8)
    gt = np.array([[1, 255, 255, 0]], dtype=np.uint8)
    # pixel 1: predicted but ignored -> not in U; pixel 3: false positive -> in U.
    assert intersection_union(pred, gt) == (1, 2)


def test_logits_are_thresholded_at_zero() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.0, 0.5]])
    gt = torch.tensor([[1, 1, 0, 0]], dtype=torch.uint8)
    assert intersection_union(logits, gt) == (1, 3)


def test_query_iou_eps_and_empty_union() -> None:
    assert query_iou(0, 0) == 1.0
    assert query_iou(3, 4) == pytest.approx(3 / (4 + 1e-5), abs=0)
    assert query_iou(0, 5) == 0.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same size"):
        intersection_union(np.zeros((3, 4)), np.zeros((4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="outside"):
        intersection_union(np.zeros((2, 2)), np.full((2, 2), 7, dtype=np.uint8))
    acc = IoUAccumulator(subsets=("short",))
    with pytest.raises(ValueError, match="unknown subset"):
        acc.update(np.zeros((2, 2)), np.zeros((2, 2), dtype=np.uint8), subset="long")
    with pytest.raises(ValueError, match="I <= U"):
        acc.add(3, 2)


def test_accumulator_matches_naive_with_subsets_and_empty_unions() -> None:
    rng = np.random.default_rng(1)
    queries = [random_query(rng) for _ in range(30)]
    queries.append((np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.uint8)))  # empty union -> IoU 1
    tags = ["short" if k % 3 == 0 else "long" for k in range(len(queries))]
    acc = IoUAccumulator(subsets=("short", "long"))
    for (pred, gt), tag in zip(queries, tags):
        i, u, iou = acc.update(torch.from_numpy(pred), torch.from_numpy(gt), subset=tag)
        assert (i, u) == naive_iu(pred, gt)
        assert iou == query_iou(i, u)
    result = acc.compute()
    giou, ciou = naive_metrics(queries)
    assert result["giou"] == pytest.approx(giou, rel=1e-12)
    assert result["ciou"] == pytest.approx(ciou, rel=1e-12)
    assert result["num_queries"] == len(queries)
    for name in ("short", "long"):
        part = [q for q, t in zip(queries, tags) if t == name]
        sub = result["subsets"][name]
        assert sub["num_queries"] == len(part)
        assert (sub["giou"], sub["ciou"]) == pytest.approx(naive_metrics(part), rel=1e-12)


def test_hand_computed_giou_ciou() -> None:
    acc = IoUAccumulator()
    acc.add(1, 2)  # IoU ~ 0.5
    acc.add(0, 0)  # empty union: IoU 1.0
    acc.add(3, 6)  # IoU ~ 0.5
    result = acc.compute()
    assert result["giou"] == pytest.approx((1 / (2 + 1e-5) + 1.0 + 3 / (6 + 1e-5)) / 3, rel=1e-12)
    assert result["ciou"] == pytest.approx(4 / (8 + 1e-10), rel=1e-12)
    assert (result["intersection"], result["union"]) == (4, 8)
    assert result["subsets"] == {}


def test_empty_accumulator_and_empty_subset() -> None:
    acc = IoUAccumulator(subsets=("short", "long"))
    acc.add(2, 4, "long")
    result = acc.compute()
    assert result["subsets"]["short"] == {"giou": 0.0, "ciou": 0.0, "num_queries": 0, "intersection": 0, "union": 0}
    assert IoUAccumulator().compute()["num_queries"] == 0


def assert_same_metrics(a: dict, b: dict) -> None:
    """Counts equal exactly; gIoU equal up to float summation order."""
    for x, y in [(a, b)] + [(a["subsets"][k], b["subsets"][k]) for k in b["subsets"]]:
        assert (x["num_queries"], x["intersection"], x["union"]) == (y["num_queries"], y["intersection"], y["union"])
        assert x["giou"] == pytest.approx(y["giou"], rel=1e-12)
        assert x["ciou"] == y["ciou"]
    assert a["subsets"].keys() == b["subsets"].keys()


def test_merge_and_state_tensor_equal_single_accumulator() -> None:
    rng = np.random.default_rng(2)
    queries = [(random_query(rng), "short" if rng.random() < 0.5 else "long") for _ in range(20)]
    single = IoUAccumulator(subsets=("short", "long"))
    ranks = [IoUAccumulator(subsets=("short", "long")) for _ in range(3)]
    for k, ((pred, gt), tag) in enumerate(queries):
        single.update(pred, gt, tag)
        ranks[k % 3].update(pred, gt, tag)

    merged = IoUAccumulator(subsets=("short", "long"))
    for r in ranks:
        merged.merge(r)
    assert_same_metrics(merged.compute(), single.compute())

    state = ranks[0].state_tensor()
    assert state.dtype == torch.float64 and tuple(state.shape) == (3, 4)
    total = torch.stack([r.state_tensor() for r in ranks]).sum(0)
    reduced = ranks[0].all_reduce(lambda t: total)
    assert reduced is ranks[0]
    assert_same_metrics(ranks[0].compute(), single.compute())

    def in_place_sum(t: torch.Tensor) -> None:  # like torch.distributed.all_reduce
        t.copy_(total)

    in_place = IoUAccumulator(subsets=("short", "long")).all_reduce(in_place_sum)
    assert_same_metrics(in_place.compute(), single.compute())

    with pytest.raises(ValueError, match="subsets differ"):
        merged.merge(IoUAccumulator(subsets=("long", "short")))
    with pytest.raises(ValueError, match="expected shape"):
        merged.load_state_tensor(torch.zeros(2, 4, dtype=torch.float64))


def test_all_reduce_with_torch_distributed(tmp_path) -> None:
    """torch.distributed.all_reduce (in place, returns None) plugs in directly (1-rank gloo group)."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        acc = IoUAccumulator(subsets=("short",))
        acc.add(1, 2, "short")
        acc.add(0, 3)
        before = acc.compute()
        assert acc.all_reduce(dist.all_reduce).compute() == before
    finally:
        dist.destroy_process_group()
