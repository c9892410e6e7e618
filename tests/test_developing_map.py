"""DEVELOPING.md's map of the packages holds the tree: every package and public module of
ggufkit/ is named in its package's row, every module or package a row lists exists, and the
flow line names the pipeline's packages in the layout test's order.

How a row is read: the first cell names the row's packages (`pkg/`) and top-level modules
(`doctor`); in the second cell a backticked `pkg/` (or a subpackage such as `batch/`) starts that
package's part of the row (a top-level module of the first cell, its own part), and a backticked lowercase name (`fetch`) names one of its modules.
A name counts wherever it stands; only names outside parentheses are taken as a claim that such
a module exists (inside them stand functions, settings and examples: `read_json`, `init`).
Private modules (`_upstream_child`) belong to the public module that uses them and are not
listed; cli/'s command modules are named by `COMMANDS`, not one by one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_layout import RANKS

from ggufkit.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ggufkit"
NAME = re.compile(r"[a-z][a-z0-9_]*")
SUMMARISED = {"cli": set(COMMANDS.values())}  # modules a row may describe as a kind


def map_section(text: str) -> str:
    return text.split("## Map of the packages", 1)[1].split("\n## ", 1)[0]


def backticked(cell: str) -> list[tuple[str, int]]:
    """The backticked names of a cell, each with its depth in parentheses."""
    found, depth = [], 0
    for index, piece in enumerate(cell.split("`")):
        if index % 2:
            found.append((piece, depth))
        else:
            depth = max(0, depth + piece.count("(") - piece.count(")"))
    return found


@dataclass
class MapReading:
    named: dict[str, set[str]] = field(default_factory=dict)  # package -> names in its part
    packages: set[str] = field(default_factory=set)  # packages named (as "hub", "workspace/batch")
    top_level: set[str] = field(default_factory=set)  # top-level modules named in a first cell
    problems: list[str] = field(default_factory=list)


def is_package(relative: str) -> bool:
    return (PACKAGE / relative / "__init__.py").is_file()


def read_map(section: str, package: Path = PACKAGE) -> MapReading:
    reading = MapReading()
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) != 2:
            reading.problems.append(f"a map row without two cells: {row[:60]}")
            continue
        current: str | None = None
        row_modules: set[str] = set()
        for name, _ in backticked(cells[0]):
            if name.endswith("/"):
                current = current or name[:-1]
                reading.packages.add(name[:-1])
                if not is_package(name[:-1]):
                    reading.problems.append(f"the map names {name}, which is not a package")
            elif NAME.fullmatch(name):
                reading.top_level.add(name)
                row_modules.add(name)
                if not (package / f"{name}.py").is_file():
                    reading.problems.append(f"the map names {name}, which is not a module")
        for name, depth in backticked(cells[1]):
            if name.endswith("/") and NAME.fullmatch(name[:-1]):
                top = (current or "").split("/")[0]
                inner = f"{top}/{name[:-1]}"
                if is_package(name[:-1]):
                    current = name[:-1]
                elif top and is_package(inner):
                    current = inner
                else:
                    reading.problems.append(f"the map names {name}, which is not a package")
                    continue
                reading.packages.add(current)
            elif name in row_modules:  # the part of a top-level module of the first cell
                current = None
            elif NAME.fullmatch(name) and current is not None:
                reading.named.setdefault(current, set()).add(name)
                exists = (package / current / f"{name}.py").is_file() or is_package(
                    f"{current}/{name}"
                )
                if depth == 0 and not exists:
                    reading.problems.append(
                        f"the map lists `{name}` under {current}/, where no such module is"
                    )
    return reading


def tree() -> tuple[set[str], dict[str, set[str]], set[str]]:
    """The packages (as "hub", "workspace/batch"), their public modules, the top-level modules."""
    packages = {
        p.parent.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("__init__.py")
        if p.parent != PACKAGE
    }
    modules = {
        package: {
            p.stem
            for p in (PACKAGE / package).glob("*.py")
            if not p.stem.startswith("_") and p.stem not in SUMMARISED.get(package, ())
        }
        for package in packages
    }
    top_level = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    return packages, modules, top_level


def missing_from_map(reading: MapReading) -> list[str]:
    packages, modules, top_level = tree()
    missing = [f"{p}/" for p in sorted(packages - reading.packages)]
    for package in sorted(packages):
        missing += [
            f"{package}/{m}" for m in sorted(modules[package] - reading.named.get(package, set()))
        ]
    missing += sorted(top_level - reading.top_level)
    return missing


SECTION = map_section((ROOT / "DEVELOPING.md").read_text(encoding="utf-8"))


def test_every_package_and_module_is_in_the_map() -> None:
    missing = missing_from_map(read_map(SECTION))
    assert not missing, f"DEVELOPING.md's map of the packages does not name {missing}"


def test_the_map_names_only_what_exists() -> None:
    problems = read_map(SECTION).problems
    assert not problems, "\n".join(problems)


def test_the_flow_line_follows_the_layers() -> None:
    (line,) = [x for x in SECTION.splitlines() if re.match(r"[a-z]+ → ", x)]
    named = re.findall(r"[a-z]+", line.split(":", 1)[0])
    low, high = RANKS[named[0]], RANKS[named[-1]]
    layers = sorted((rank, unit) for unit, rank in RANKS.items() if low <= rank <= high)
    assert named == [unit for _, unit in layers]


# --- the reading itself, on made-up maps (each check must be able to fail) --------------------


@pytest.mark.parametrize(
    ("row", "missing", "problem"),
    [
        ("| `hub/` | `selection`, `fetch`, `cache`, `errors`, `settings`, `upload` |", "hub/timeouts", None),
        ("| `hub/` | `selection` (`fetch`, `cache`, `errors`, `settings`, `upload`, `timeouts`) |", None, None),
        ("| `hub/` | `selection`, `fetched`, `fetch`, `cache`, `errors`, `settings`, `upload`, `timeouts` |", None, "`fetched` under hub/"),
        ("| `hub/` | `selection`, `fetch`, `cache` (`fetched`), `errors`, `settings`, `upload`, `timeouts` |", None, None),
        ("| `workspace/` | `steps`; `batch/` (`plan`, `graph`) |", "workspace/batch/local", None),
        ("| `workspace/` | `steps`; `batchs/` (`plan`) |", "workspace/batch/", "batchs/, which is not a package"),
        ("| `hubs/` | `fetch` |", "hub/", "hubs/, which is not a package"),
        ("| `doctors` | checks |", "doctor", "doctors, which is not a module"),
    ],
)  # fmt: skip
def test_the_reading_catches_what_is_wrong(
    row: str, missing: str | None, problem: str | None
) -> None:
    reading = read_map(f"| package | what |\n| --- | --- |\n{row}\n")
    gaps = missing_from_map(reading)
    if missing is None:
        assert not [g for g in gaps if g.startswith("hub")], gaps
    else:
        assert missing in gaps
    if problem is None:
        assert not reading.problems, reading.problems
    else:
        assert any(problem in p for p in reading.problems), reading.problems
