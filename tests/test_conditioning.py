"""The branch-input builders' selection rules (``mirage.conditioning``) on hand-made geometry.

Mirage picks references by voxel IoU (threshold 0.04, voxels of 0.1 m, at most 4, best first);
Spatia by a Hungarian assignment of shared visible points, one per target camera, in target order.
What each chunk's inputs look like inside a generation run is in ``tests/test_pipeline_branch.py``.
"""

from __future__ import annotations

import torch

from mirage.cameras import Cameras
from mirage.conditioning import mirage_references, seen_voxels, spatia_references, visible_points, voxel_iou
from mirage.memory import Observation, RGBPointCloudMemory

W, H = 12, 8


def cameras_at(xs: list[float], yaw_deg: list[float] | None = None) -> Cameras:
    """Cameras at x = ``xs`` on the x axis looking along +z (or turned by ``yaw_deg`` about y)."""
    yaw = torch.tensor(yaw_deg if yaw_deg is not None else [0.0] * len(xs)) * torch.pi / 180
    T = torch.eye(4).repeat(len(xs), 1, 1)  # [N, 4, 4] cam_from_world
    c, s = torch.cos(yaw), torch.sin(yaw)
    R = torch.zeros(len(xs), 3, 3)
    R[:, 0, 0], R[:, 0, 2], R[:, 1, 1], R[:, 2, 0], R[:, 2, 2] = c, -s, 1.0, s, c  # world -> camera rotation
    T[:, :3, :3] = R
    T[:, :3, 3] = -(R @ torch.tensor([[x, 0.0, 0.0] for x in xs])[..., None])[..., 0]
    K = torch.tensor([[6.0, 0, W / 2], [0, 6.0, H / 2], [0, 0, 1]])
    return Cameras(K, T, W, H)


def wall(z: float = 4.0, x_range=(-8.0, 8.0)) -> torch.Tensor:  # [N, 3] points on a plane z = const
    xs = torch.arange(x_range[0], x_range[1], 0.05)
    ys = torch.arange(-2.0, 2.0, 0.05)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten(), torch.full_like(gx.flatten(), z)], dim=-1)


def test_visible_points_are_in_front_and_inside_the_image():
    pts = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0], [50.0, 0.0, 2.0]])  # ahead, behind, far to the side
    assert visible_points(pts, cameras_at([0.0]), H, W).tolist() == [[True, False, False]]


def test_voxel_iou():
    a, b = torch.tensor([1, 2, 3, 3]), torch.tensor([3, 4])
    assert voxel_iou(a, b) == 1 / 4  # duplicates count once: {3} / {1, 2, 3, 4}
    assert voxel_iou(a, a) == 1.0 and voxel_iou(torch.tensor([], dtype=torch.long), b) == 0.0


def test_mirage_references_best_overlap_first_above_threshold_at_most_four():
    pts = wall()
    targets = cameras_at([0.0, 0.2])
    # candidates: far right (little overlap), the target's own view, looking away, slightly shifted, others
    candidates = cameras_at([7.9, 0.0, 0.0, 1.0, 2.0, 3.0, 0.1], [0, 0, 180, 0, 0, 0, 0])
    keys = seen_voxels(pts, candidates, H, W)  # what each candidate saw (when it was made)
    chosen = mirage_references(pts, targets, keys, H, W)
    seen = visible_points(pts, candidates, H, W)
    target_keys = (torch.floor(pts / 0.1).long() * torch.tensor([1, 1 << 20, 1 << 40])).sum(-1)
    ious = [voxel_iou(target_keys[visible_points(pts, targets, H, W).any(0)], target_keys[seen[j]]) for j in range(len(candidates))]
    assert ious[2] == 0.0 and ious[0] < 0.04 <= ious[5]  # looking away: nothing; far right: below the threshold
    assert len(chosen) == 4 and 2 not in chosen and 0 not in chosen
    assert [ious[j] for j in chosen] == sorted([ious[j] for j in chosen], reverse=True)
    assert chosen[:2] == [1, 6]  # the views closest to the targets overlap most
    assert mirage_references(pts, targets, keys, H, W, max_references=2) == [1, 6]
    assert mirage_references(pts, targets, [], H, W) == []
    assert mirage_references(pts, targets, [keys[1], keys[1]], H, W) == [0, 1]  # ties: the earlier first


def wall_memory() -> RGBPointCloudMemory:
    """A real pixel memory of 50 points on a wall at z = 4, one per metre at x = 0.5 .. 49.5 (a 50x1
    image seen from x = 25), so that a camera seeing the wall between x = a and x = b shows exactly
    the points in [a, b) (``segment_cameras``)."""
    K = torch.tensor([[4.0, 0, 25.0], [0, 4.0, 0.5], [0, 0, 1]])
    T = torch.eye(4)
    T[0, 3] = -25.0  # the camera at x = 25
    source = Cameras(K[None], T[None], 50, 1)
    memory = RGBPointCloudMemory()
    memory.initialize(Observation(source, torch.full((1, 1, 50), 4.0), frames=torch.zeros(3, 1, 1, 50)))
    return memory


def segment_cameras(segments: list[tuple[float, float]]) -> Cameras:
    """50x1 cameras on the x axis looking along +z, each framing the wall at z = 4 from x = a to x = b."""
    K = torch.zeros(len(segments), 3, 3)
    T = torch.eye(4).repeat(len(segments), 1, 1)
    for i, (a, b) in enumerate(segments):
        f = 25.0 / ((b - a) / 2 / 4)  # 25 pixels span half the segment at 4 m
        K[i] = torch.tensor([[f, 0, 25.0], [0, f, 0.5], [0, 0, 1]])
        T[i, 0, 3] = -(a + b) / 2
    return Cameras(K, T, 50, 1)


def test_spatia_references_hungarian_not_greedy_one_per_target_in_target_order():
    # target 0 shares 10 points with candidate A and 8 with B; target 1 shares 9 with A and none with B.
    # Greedy (target 0 takes A) would total 10; the assignment target 0 -> B, target 1 -> A totals 17.
    memory = wall_memory()
    targets = segment_cameras([(0, 20), (11, 20)])
    candidates = segment_cameras([(40, 50), (10, 20), (0, 8)])  # C (shares nothing), A, B
    shown = [set(memory.point_ids(c)[memory.point_ids(c) >= 0].tolist()) for c in (targets[:1], targets[1:])]
    seen = [set(memory.point_ids(c)[memory.point_ids(c) >= 0].tolist()) for c in (candidates[i : i + 1] for i in range(3))]
    assert [[len(t & c) for c in seen] for t in shown] == [[0, 10, 8], [0, 9, 0]]  # the real z-buffer gives the setup
    assert spatia_references(memory, targets, candidates) == [2, 1]  # target 0 -> B (index 2), target 1 -> A (index 1)
    assert spatia_references(memory, targets, candidates, max_references=1) == [2]
    assert spatia_references(memory, targets, candidates[:1]) == []  # no shared points: no reference
