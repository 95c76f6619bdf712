"""Mutation score of core modules against their own test files, with cosmic-ray.

Each module is mutated in a copy of the working tree (never in place) and its own test file is
run against each mutant; a mutant is *killed* when a test fails. All of a module's mutants
would take hours on 2 CPU cores (each test run imports torch and trains tiny models), so a
seeded random sample of ``--sample`` mutants per module is run (mutants inside type annotations,
which are never evaluated, are left out); the same seed and source pick the same mutants.
Surviving mutants are written as diffs to WORK/survivors-<module>.txt.

    pip install cosmic-ray
    OMP_NUM_THREADS=1 python benchmarks/mutation_testing.py --sample 15
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# module -> the test file(s) that are its own
MODULES = {
    "ocrl/metrics.py": "tests/test_metrics.py",
    "ocrl/wrappers.py": "tests/test_wrappers.py",
    "world_models/evaluation.py": "tests/test_world_model.py",
    "world_models/imagination.py": "tests/test_world_model.py",
}


def copy_tree(work: Path, revision: str | None) -> Path:
    """The files of ``revision`` (default: the working tree's tracked and untracked-but-not-ignored
    files), copied to WORK/src, with envs/, agents/, world_models/ linked into ocrl/ so that the
    copy imports as ``ocrl``."""
    source = work / "src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    if revision is not None:
        archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    else:
        files = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for name in files:
            if (ROOT / name).is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, source / name)
    for package in ("envs", "agents", "world_models"):
        (source / "ocrl" / package).symlink_to(Path("..") / package)
    return source


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of the type annotations of a module: with ``from __future__ import
    annotations`` they are never evaluated, so mutating them gives equivalent mutants."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text())):
        annotations = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            annotations.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        spans += [((item.lineno, item.col_offset), (item.end_lineno, item.end_col_offset)) for item in annotations]
    return spans


def sample(session: Path, module: Path, count: int, seed: int) -> int:
    """Keep a seeded random ``count`` of the session's mutants that are not in annotations;
    returns how many such mutants there were."""
    spans = annotation_spans(module)
    with sqlite3.connect(session) as database:
        everything = database.execute(
            "select job_id, operator_name, occurrence, start_pos_row, start_pos_col from mutation_specs"
        ).fetchall()
        rows = [row for row in everything if not any(start <= (row[3], row[4]) < end for start, end in spans)]
        rows.sort(key=lambda row: row[1:])  # job ids are random; the mutations are not
        kept = {row[0] for row in random.Random(seed).sample(rows, min(count, len(rows)))}
        dropped = [(row[0],) for row in everything if row[0] not in kept]
        database.executemany("delete from mutation_specs where job_id = ?", dropped)
        database.executemany("delete from work_items where job_id = ?", dropped)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=15, help="mutants per module (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ocrl-mutation"))
    parser.add_argument("--modules", nargs="+", default=list(MODULES), choices=list(MODULES))
    parser.add_argument(
        "--revision",
        help="a git revision to test instead of the working tree (e.g. to score the tests of before a change)",
    )
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    source = copy_tree(args.work, args.revision)
    environment = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cosmic_ray = Path(sys.executable).with_name("cosmic-ray")
    print("| module | mutants (outside annotations) | sampled | killed | survived | score |")
    print("|---|---|---|---|---|---|")
    for module in args.modules:
        name = module.replace("/", "-").removesuffix(".py")
        config, session = args.work / f"{name}.toml", args.work / f"{name}.sqlite"
        session.unlink(missing_ok=True)
        tests = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {MODULES[module]}"
        config.write_text(
            f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = 300.0\nexcluded-modules = []\n'
            f'test-command = "{tests}"\n[cosmic-ray.distributor]\nname = "local"\n'
        )
        subprocess.run([str(cosmic_ray), "init", str(config), str(session)], cwd=source, env=environment, check=True)
        total = sample(session, source / module, args.sample, args.seed)
        subprocess.run([str(cosmic_ray), "exec", str(config), str(session)], cwd=source, env=environment, check=True)
        with sqlite3.connect(session) as database:
            results = database.execute("select test_outcome, diff from work_results").fetchall()
        killed = sum(outcome.lower() == "killed" for outcome, _ in results)
        survivors = [diff for outcome, diff in results if outcome.lower() == "survived"]
        (args.work / f"survivors-{name}.txt").write_text("\n".join(survivors))
        score = killed / max(1, killed + len(survivors))
        print(f"| `{module}` | {total} | {len(results)} | {killed} | {len(survivors)} | {score:.0%} |", flush=True)


if __name__ == "__main__":
    main()
