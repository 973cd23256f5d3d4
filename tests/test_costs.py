"""The GPU duration model (mirage.costs) against the H100 runs in benchmarks/results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirage.costs import PRIORS, ChunkCost, CostModel, h100_call_seconds, prior_for
from mirage.families import FAMILIES
from mirage.frames import Chunking

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"
# (results file, conditioning family or None, chunking of the run)
RUNS = [("pipeline_resident_cuda_h100.json", None, Chunking(33, 33, 1)),
        ("pipeline_offload_cuda_h100.json", None, Chunking(33, 33, 1)),
        ("pipeline_branch_mirage_cuda_h100.json", "mirage", FAMILIES["mirage"].defaults.chunking),
        ("pipeline_branch_spatia_cuda_h100.json", "spatia", FAMILIES["spatia"].defaults.chunking)]  # fmt: skip
_CHUNK_STAGES = ("project", "rasterize", "encode", "condition", "denoise", "decode", "depth", "update")


def _measured_chunks(name, family, chunking):
    """(ChunkCost, stage timings, measured seconds) of every chunk of every run in a results file."""
    data = json.loads((RESULTS / name).read_text())
    cfg = data["config"]
    ranges = chunking.ranges(cfg["frames"])
    out = []
    for mode in data["modes"].values():
        for run in mode["runs"]:
            assert len(run["chunk_timings"]) == len(ranges)
            for i, (t, r) in enumerate(zip(run["chunk_timings"], ranges)):
                cost = ChunkCost.of(run["memory"], r, i, cfg["steps"], run["guidance"],
                                    FAMILIES[family] if family else None, (cfg["height"], cfg["width"]), display=False)  # fmt: skip
                stages = {k: v for k, v in t.items() if k in _CHUNK_STAGES}
                out.append((cost, stages, t["total"]))
    return out


@pytest.mark.parametrize("name, family, chunking", RUNS)
def test_the_h100_model_predicts_every_measured_chunk_within_25_percent(name, family, chunking):
    model = CostModel(prior_for("NVIDIA H100 80GB HBM3"))
    chunks = _measured_chunks(name, family, chunking)
    assert len(chunks) >= 8
    for cost, _, measured in chunks:
        assert model.predict(cost) == pytest.approx(measured, rel=0.25), cost


@pytest.mark.parametrize("name, family, chunking", RUNS)
def test_a_gpu_that_measured_one_chunk_predicts_the_others_within_25_percent(name, family, chunking):
    """An unknown GPU learns its factors from the first chunk it runs (here: the H100's own stage
    times, read as if measured on some GPU 2.5 times slower), then predicts the rest."""
    slow = 2.5
    chunks = _measured_chunks(name, family, chunking)
    model = CostModel(None, cap=10_000)
    first_cost, first_stages, _ = chunks[0]
    assert model.predict(first_cost) is None
    model.observe(first_cost, {k: slow * v for k, v in first_stages.items()})
    for cost, _, measured in chunks[1:]:
        assert model.predict(cost) == pytest.approx(slow * measured, rel=0.25), cost


def test_a_first_call_on_an_unknown_gpu_asks_for_more_never_less_than_later_calls():
    model = CostModel(None, cap=120)
    cost = ChunkCost.of("rgb", (32, 65), 1, 50, 5.0)
    first = model.request(cost)
    assert first == 120 and model.fits(cost)  # unknown: the cap, and nothing refused before measuring
    model.observe(cost, {"denoise": 30.0, "decode": 3.0, "depth": 0.7, "rasterize": 0.5, "encode": 0.4})
    later = model.request(cost)
    assert later <= first and later == pytest.approx(1.25 * model.predict(cost) + 10, abs=1)
    assert model.predict(cost) == pytest.approx(34.6, rel=1e-6)  # it predicts exactly what it measured


def test_priors_are_never_below_what_a_gpu_measures_and_observe_keeps_the_slowest():
    """A known GPU's prior asks for more than it then needs; observing a faster chunk after a slower
    one never lowers the request (a call must not be cut short by a lucky measurement)."""
    model = CostModel(prior_for("NVIDIA RTX PRO 6000 Blackwell Server Edition", half=True))
    assert model.prior.name.startswith("RTX PRO 6000 Blackwell, half") and model.prior.factor > 3
    assert prior_for("NVIDIA RTX PRO 6000 Blackwell Server Edition").factor == model.prior.factor / 2
    assert prior_for("NVIDIA H200").factor == 1.0 and prior_for("Some GPU") is None
    assert {p.name for p in PRIORS} >= {"H100", "H200", "L40S", "A10G"}
    cost = ChunkCost.of("latent", (0, 33), 0, 20, 1.0)
    before = model.request(cost)
    h100 = 20 * h100_call_seconds(9)
    model.observe(cost, {"denoise": 2.0 * h100, "decode": 2.0 * 2.8, "depth": 2.0 * 0.63})
    slow = model.request(cost)
    assert slow < before  # measured: twice the H100, less than the half card's prior
    model.observe(cost, {"denoise": h100, "decode": 2.8, "depth": 0.63})
    assert model.request(cost) == slow


def test_a_chunk_counts_its_references_calls_and_pixels():
    spatia = FAMILIES["spatia"]
    first = ChunkCost.of("rgb", (0, 121), 0, 40, 3.5, spatia)
    later = ChunkCost.of("rgb", (112, 193), 1, 40, 3.5, spatia)
    assert (first.calls, first.latent_frames, first.branch_blocks, first.first) == (80, 31, 8, True)
    assert (later.latent_frames, later.frames, later.first) == (21 + spatia.extra_latents, 81, False)
    assert ChunkCost.of("latent", (0, 33), 0, 20, 1.0).calls == 20  # no guidance: one call per step
    small = ChunkCost.of("latent", (32, 65), 1, 20, 1.0, size=(352, 640))  # a quarter of the pixels (attention: less)
    model = CostModel(PRIORS[0])
    assert model.predict(small) == pytest.approx(model.predict(ChunkCost.of("latent", (32, 65), 1, 20, 1.0)) / 4)


def test_a_platform_that_grants_more_than_asked_is_asked_for_less():
    """ZeroGPU grants 1.5 s per second a ``large`` call asks for on a Blackwell card (``spaces``'
    duration_factor): the request divides by it, and a chunk fits when it fits the granted time."""
    plain = CostModel(prior_for("NVIDIA RTX PRO 6000 Blackwell Server Edition", half=True), cap=120)
    granted = CostModel(plain.prior, cap=120, granted_per_second=1.5)
    cost = ChunkCost.of("rgb", (32, 65), 1, 20, 5.0)
    need = plain.needed(cost)
    assert plain.request(cost) == min(120, int(-(-need // 1)))
    assert granted.request(cost) == int(-(-need / 1.5 // 1))  # granted 1.5x: what the chunk needs
    big = ChunkCost.of("rgb", (32, 65), 1, 50, 5.0)
    assert 120 < granted.needed(big) <= 180
    assert not plain.fits(big) and granted.fits(big) and granted.request(big) <= 120


def test_the_readout_decoded_for_the_page_is_predicted_and_learned_as_part_of_a_chunk():
    """An app chunk also decodes its readout for the page (``display``): predicted on top of the
    library's chunk, by one decode's worth on the H100, and learned from its measured ``display`` stage."""
    h100 = CostModel(prior_for("NVIDIA H100 80GB HBM3"))
    app, library = (ChunkCost.of("latent", (32, 65), 1, 20, 1.0, display=d) for d in (True, False))
    assert h100.predict(app) - h100.predict(library) == pytest.approx(2.8, rel=0.01)  # one float32 decode, 33 frames
    model = CostModel(None, cap=10_000)
    stages = {"denoise": 10.0, "decode": 3.0, "depth": 1.0, "update": 0.1}
    model.observe(app, {**stages, "display": 3.0})
    assert model.predict(app) == pytest.approx(17.1, rel=1e-6)  # every stage measured, the display decode included
    slow = CostModel(None, cap=10_000)
    slow.observe(app, {**stages, "display": 9.0})
    assert slow.predict(app) == pytest.approx(23.1, rel=1e-6)
