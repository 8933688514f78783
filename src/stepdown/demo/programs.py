"""Candidate grid programs for the ARC demo job.

The demo needs a unit of work that is pure-Python CPU time, picklable and uneven in cost, and that
means something: a brute-force search over a few hundred small grid programs is exactly that.
Grids are tuples of tuples of ints (no numpy), so every candidate costs interpreter time in
proportion to the grid's size, a result compares with ``==``, and everything pickles.

A program is a name and a sequence of steps, each a module-level function ``grid -> grid``
applied left to right (``"rot90+crop"`` rotates, then crops). A step may raise on input it does
not apply to (cropping an empty grid, scaling down an odd-sized one); the scorer counts that as
"no match". Some programs *learn*: they end with a colour map fitted on the task's first demo
pair (:meth:`Program.fit`), which is how a recolouring task is solved without knowing its
colours in advance.

Every step is a module-level function and :class:`Program` is a frozen dataclass holding them, so
programs pickle by reference; still, a job should send program *names* to its workers
(:func:`get_program`) and let each worker look them up, which costs nothing to pickle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "BACKGROUND",
    "PROGRAMS",
    "PROGRAMS_BY_NAME",
    "Grid",
    "Pair",
    "Program",
    "Step",
    "anti_transpose",
    "crop",
    "fill_most_common",
    "flip_h",
    "flip_v",
    "get_program",
    "gravity_down",
    "gravity_left",
    "gravity_right",
    "gravity_up",
    "identity",
    "largest_object",
    "learn_colour_map",
    "objects",
    "recolour",
    "rot90",
    "rot180",
    "rot270",
    "scale_down2",
    "scale_down3",
    "scale_up2",
    "scale_up3",
    "smallest_object",
    "tile_1x2",
    "tile_2x1",
    "tile_2x2",
    "tile_mirror_1x2",
    "tile_mirror_2x1",
    "tile_mirror_2x2",
    "transpose",
]

Grid = tuple[tuple[int, ...], ...]
"""A grid: rows of colours 0-9, all rows the same length. Tuples, so grids hash and pickle."""

Pair = tuple[Grid, Grid]
"""A demo pair: (input grid, output grid)."""

Step = Callable[[Grid], Grid]
"""One step of a program. Module-level functions only, so that programs pickle by reference."""

BACKGROUND = 0
"""ARC's background colour (black). The steps below rely on it being falsy."""

# Steps zip rows with ``strict=True``: a ragged grid is malformed input, so it raises (no match)
# rather than being silently truncated into a grid that might happen to match.


# --- symmetries of the square ------------------------------------------------------------------


def identity(grid: Grid) -> Grid:
    """Return the grid unchanged: the baseline every search should try first."""
    return grid


def rot90(grid: Grid) -> Grid:
    """Rotate a quarter turn clockwise."""
    return tuple(zip(*grid[::-1], strict=True))


def rot180(grid: Grid) -> Grid:
    """Rotate a half turn."""
    return tuple(row[::-1] for row in grid[::-1])


def rot270(grid: Grid) -> Grid:
    """Rotate a quarter turn anticlockwise."""
    return tuple(zip(*grid, strict=True))[::-1]


def flip_h(grid: Grid) -> Grid:
    """Mirror left to right (each row reversed)."""
    return tuple(row[::-1] for row in grid)


def flip_v(grid: Grid) -> Grid:
    """Mirror top to bottom (row order reversed)."""
    return grid[::-1]


def transpose(grid: Grid) -> Grid:
    """Mirror in the main diagonal."""
    return tuple(zip(*grid, strict=True))


def anti_transpose(grid: Grid) -> Grid:
    """Mirror in the anti-diagonal (top-right to bottom-left)."""
    return tuple(row[::-1] for row in zip(*grid, strict=True))[::-1]


# --- size: crop, scale, tile --------------------------------------------------------------------


def crop(grid: Grid) -> Grid:
    """Cut the grid down to the bounding box of its non-background cells.

    Raises ``ValueError`` on an all-background grid: there is nothing to crop to.
    """
    rows = [i for i, row in enumerate(grid) if any(row)]
    if not rows:
        raise ValueError("nothing to crop: the grid is all background")
    cols = [j for j, col in enumerate(zip(*grid, strict=True)) if any(col)]
    return tuple(row[cols[0] : cols[-1] + 1] for row in grid[rows[0] : rows[-1] + 1])


def _scale_up(grid: Grid, k: int) -> Grid:
    return tuple(tuple(value for value in row for _ in range(k)) for row in grid for _ in range(k))


def scale_up2(grid: Grid) -> Grid:
    """Blow every cell up into a 2x2 block."""
    return _scale_up(grid, 2)


def scale_up3(grid: Grid) -> Grid:
    """Blow every cell up into a 3x3 block."""
    return _scale_up(grid, 3)


def _scale_down(grid: Grid, k: int) -> Grid:
    height, width = len(grid), len(grid[0])
    if height % k or width % k:
        raise ValueError(f"a {height}x{width} grid does not divide into {k}x{k} blocks")
    out = []
    for top in range(0, height, k):
        block_rows = grid[top : top + k]
        row = []
        for left in range(0, width, k):
            value = block_rows[0][left]
            for block_row in block_rows:
                for cell in block_row[left : left + k]:
                    if cell != value:
                        raise ValueError(f"the {k}x{k} block at ({top}, {left}) is not uniform")
            row.append(value)
        out.append(tuple(row))
    return tuple(out)


def scale_down2(grid: Grid) -> Grid:
    """Shrink uniform 2x2 blocks to single cells: the inverse of :func:`scale_up2`.

    Raises ``ValueError`` when the grid is not made of uniform 2x2 blocks, rather than guess.
    """
    return _scale_down(grid, 2)


def scale_down3(grid: Grid) -> Grid:
    """Shrink uniform 3x3 blocks to single cells: the inverse of :func:`scale_up3`."""
    return _scale_down(grid, 3)


def tile_2x2(grid: Grid) -> Grid:
    """Repeat the grid twice across and twice down."""
    return tuple(row * 2 for row in grid) * 2


def tile_1x2(grid: Grid) -> Grid:
    """Repeat the grid twice across."""
    return tuple(row * 2 for row in grid)


def tile_2x1(grid: Grid) -> Grid:
    """Repeat the grid twice down."""
    return grid * 2


def tile_mirror_1x2(grid: Grid) -> Grid:
    """The grid, then its left-right mirror image beside it."""
    return tuple(row + row[::-1] for row in grid)


def tile_mirror_2x1(grid: Grid) -> Grid:
    """The grid, then its top-bottom mirror image below it."""
    return grid + grid[::-1]


def tile_mirror_2x2(grid: Grid) -> Grid:
    """Four mirror images of the grid, as a kaleidoscope: the result is symmetric both ways."""
    top = tile_mirror_1x2(grid)
    return top + top[::-1]


# --- gravity ------------------------------------------------------------------------------------


def _fall_end(line: tuple[int, ...]) -> tuple[int, ...]:
    """Non-background cells slide to the end of the line, keeping their order."""
    solid = tuple(value for value in line if value)
    return (BACKGROUND,) * (len(line) - len(solid)) + solid


def _fall_start(line: tuple[int, ...]) -> tuple[int, ...]:
    """Non-background cells slide to the start of the line, keeping their order."""
    solid = tuple(value for value in line if value)
    return solid + (BACKGROUND,) * (len(line) - len(solid))


def gravity_down(grid: Grid) -> Grid:
    """Every non-background cell falls to the bottom of its column."""
    return transpose(tuple(_fall_end(col) for col in zip(*grid, strict=True)))


def gravity_up(grid: Grid) -> Grid:
    """Every non-background cell rises to the top of its column."""
    return transpose(tuple(_fall_start(col) for col in zip(*grid, strict=True)))


def gravity_right(grid: Grid) -> Grid:
    """Every non-background cell slides to the right end of its row."""
    return tuple(_fall_end(row) for row in grid)


def gravity_left(grid: Grid) -> Grid:
    """Every non-background cell slides to the left end of its row."""
    return tuple(_fall_start(row) for row in grid)


# --- objects ------------------------------------------------------------------------------------


def objects(grid: Grid) -> list[list[tuple[int, int]]]:
    """The grid's objects: 8-connected groups of non-background cells, of any colours.

    Returned in scan order of their first cell (top to bottom, left to right), so that ties
    between objects of equal size are broken the same way every time.
    """
    height, width = len(grid), len(grid[0]) if grid else 0
    seen = [[False] * width for _ in range(height)]
    found: list[list[tuple[int, int]]] = []
    for i in range(height):
        for j in range(width):
            if seen[i][j] or not grid[i][j]:
                continue
            seen[i][j] = True
            cells = [(i, j)]
            stack = [(i, j)]
            while stack:
                y, x = stack.pop()
                for ny in (y - 1, y, y + 1):
                    if ny < 0 or ny >= height:
                        continue
                    row, seen_row = grid[ny], seen[ny]
                    for nx in (x - 1, x, x + 1):
                        if 0 <= nx < width and not seen_row[nx] and row[nx]:
                            seen_row[nx] = True
                            cells.append((ny, nx))
                            stack.append((ny, nx))
            found.append(cells)
    return found


def _extract(grid: Grid, cells: list[tuple[int, int]]) -> Grid:
    """The object's bounding box, with only the object's own cells kept."""
    top = min(y for y, _ in cells)
    left = min(x for _, x in cells)
    bottom = max(y for y, _ in cells)
    right = max(x for _, x in cells)
    out = [[BACKGROUND] * (right - left + 1) for _ in range(bottom - top + 1)]
    for y, x in cells:
        out[y - top][x - left] = grid[y][x]
    return tuple(tuple(row) for row in out)


def largest_object(grid: Grid) -> Grid:
    """Cut out the object with the most cells (the first in scan order on a tie)."""
    found = objects(grid)
    if not found:
        raise ValueError("no objects: the grid is all background")
    return _extract(grid, max(found, key=len))


def smallest_object(grid: Grid) -> Grid:
    """Cut out the object with the fewest cells (the first in scan order on a tie)."""
    found = objects(grid)
    if not found:
        raise ValueError("no objects: the grid is all background")
    return _extract(grid, min(found, key=len))


# --- colours ------------------------------------------------------------------------------------


def fill_most_common(grid: Grid) -> Grid:
    """Paint every non-background cell in the grid's most common non-background colour."""
    counts = Counter(value for row in grid for value in row if value)
    if not counts:
        raise ValueError("no colours: the grid is all background")
    colour = counts.most_common(1)[0][0]
    return tuple(tuple(colour if value else BACKGROUND for value in row) for row in grid)


def learn_colour_map(source: Grid, target: Grid) -> dict[int, int]:
    """The cell-by-cell colour map taking ``source`` to ``target``.

    Raises ``ValueError`` when the grids differ in shape or a colour would have to map to two
    colours: then no colour map explains the pair, and the program that learns it cannot match.
    """
    if len(source) != len(target) or any(
        len(a) != len(b) for a, b in zip(source, target, strict=True)
    ):
        raise ValueError("a colour map cannot change the grid's shape")
    mapping: dict[int, int] = {}
    for source_row, target_row in zip(source, target, strict=True):
        for a, b in zip(source_row, target_row, strict=True):
            if mapping.setdefault(a, b) != b:
                raise ValueError(f"colour {a} maps to both {mapping[a]} and {b}")
    return mapping


def recolour(grid: Grid, mapping: Mapping[int, int]) -> Grid:
    """Apply a colour map; colours it does not mention stay as they are."""
    return tuple(tuple(mapping.get(value, value) for value in row) for row in grid)


# --- programs -----------------------------------------------------------------------------------


def _run_steps(steps: tuple[Step, ...], grid: Grid) -> Grid:
    for step in steps:
        grid = step(grid)
    return grid


@dataclass(frozen=True)
class Fitted:
    """A program made concrete for one task: its steps and, if it learns, the learned colours."""

    steps: tuple[Step, ...]
    colour_map: tuple[tuple[int, int], ...] | None = None

    def __call__(self, grid: Grid) -> Grid:
        """Run the steps, then the colour map if there is one."""
        grid = _run_steps(self.steps, grid)
        if self.colour_map is not None:
            grid = recolour(grid, dict(self.colour_map))
        return grid


@dataclass(frozen=True)
class Program:
    """A named candidate: steps applied left to right, optionally ending in a learned colour map.

    A learning program is only complete once :meth:`fit` has seen a demo pair, so the scorer
    always goes through :meth:`fit`; for the others ``fit`` ignores the pair.
    """

    name: str
    steps: tuple[Step, ...]
    learns_colours: bool = False

    def fit(self, example: Pair) -> Fitted:
        """Make the program concrete for a task, given the task's first demo pair.

        Raises (``ValueError``, or whatever a step raises) when the pair admits no colour map.
        """
        if not self.learns_colours:
            return Fitted(self.steps)
        source, target = example
        mapping = learn_colour_map(_run_steps(self.steps, source), target)
        return Fitted(self.steps, tuple(sorted(mapping.items())))


_SYMMETRIES: tuple[Step, ...] = (
    rot90,
    rot180,
    rot270,
    flip_h,
    flip_v,
    transpose,
    anti_transpose,
)
"""The seven non-trivial symmetries of the square: any two of them compose to a third (or to
identity), so pairs of them are left out of the compositions."""

_BASE: tuple[Step, ...] = (
    *_SYMMETRIES,
    crop,
    scale_up2,
    scale_down2,
    tile_2x2,
    tile_mirror_2x2,
    gravity_down,
    gravity_up,
    gravity_left,
    gravity_right,
    largest_object,
    smallest_object,
    fill_most_common,
)
"""The steps that are also composed pairwise (19 of them: 300 useful ordered pairs)."""

_SINGLES_ONLY: tuple[Step, ...] = (
    scale_up3,
    scale_down3,
    tile_1x2,
    tile_2x1,
    tile_mirror_1x2,
    tile_mirror_2x1,
)
"""Steps tried on their own only, to keep the composition set (and the job's run time) modest."""


def _name(steps: tuple[Step, ...]) -> str:
    return "+".join(step.__name__ for step in steps)


def _build() -> Iterator[Program]:
    """The registry, cheapest and most plausible first, since the first solving program wins."""
    yield Program("identity", (identity,))
    for step in (*_BASE, *_SINGLES_ONLY):
        yield Program(step.__name__, (step,))
    yield Program("colour_map", (), learns_colours=True)
    for step in _BASE:
        yield Program(f"{step.__name__}+colour_map", (step,), learns_colours=True)
    for first in _BASE:
        for second in _BASE:
            if first is second or (first in _SYMMETRIES and second in _SYMMETRIES):
                continue
            yield Program(_name((first, second)), (first, second))


PROGRAMS: tuple[Program, ...] = tuple(_build())
"""Every candidate, in the order the scorer tries them."""

PROGRAMS_BY_NAME: Mapping[str, Program] = MappingProxyType({p.name: p for p in PROGRAMS})
"""The candidates by name, read-only."""

if len(PROGRAMS_BY_NAME) != len(PROGRAMS):  # pragma: no cover - a registry bug
    raise RuntimeError("two candidate programs share a name")


def get_program(name: str) -> Program:
    """Look a candidate up by name, so that jobs can ship names rather than functions."""
    try:
        return PROGRAMS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"no candidate program named {name!r} ({len(PROGRAMS)} known)") from None
