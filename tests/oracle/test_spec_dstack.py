"""Spec parsing vs. dstack 0.22.5: every corpus input is normalised by dstack's own pydantic
models (`dstack_normalize.py`) and by dstack-sdk (`examples/normalize.rs`).

For each line: when dstack accepts the input, our normalised JSON must equal dstack's; when
dstack rejects it, we must reject it too.
"""
import json
import pathlib
import subprocess
import sys

import pytest

from conftest import build_example

HERE = pathlib.Path(__file__).resolve().parent
CORPUS_DIR = HERE / "corpus"
CORPORA = sorted(CORPUS_DIR.glob("*.jsonl"))


def _lines(path: pathlib.Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run(cmd: list[str], n: int) -> list[dict]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    assert len(out) == n, f"{cmd[0]} printed {len(out)} lines for {n} inputs"
    return [json.loads(line) for line in out]


@pytest.fixture(scope="session")
def normalize_bin() -> pathlib.Path:
    return build_example("normalize")


def test_corpus_is_broad():
    lines = [json.loads(line) for path in CORPORA for line in _lines(path)]
    spec_lines = [c for path in CORPORA if path.name.startswith("spec_") for c in map(json.loads, _lines(path))]
    assert len(spec_lines) >= 300
    kinds = {c["kind"] for c in spec_lines}
    for kind in ["range_int", "range_memory", "gpu", "cpu", "disk", "resources", "duration", "env",
                 "port", "profile", "configuration", "combine", "query", "resources_defaults"]:
        assert kind in kinds, kind
    assert len(lines) >= len(spec_lines)


@pytest.mark.parametrize("corpus", CORPORA, ids=[p.stem for p in CORPORA])
def test_matches_dstack(corpus: pathlib.Path, normalize_bin: pathlib.Path):
    lines = _lines(corpus)
    theirs = _run([sys.executable, str(HERE / "dstack_normalize.py"), str(corpus)], len(lines))
    ours = _run([str(normalize_bin), str(corpus)], len(lines))
    failures = []
    accepted = rejected = 0
    for i, (line, t, o) in enumerate(zip(lines, theirs, ours), start=1):
        if "ok" in t:
            accepted += 1
            if "ok" not in o:
                failures.append(f"{corpus.name}:{i}: dstack accepts, we reject ({o['err']})\n  {line}")
            elif o["ok"] != t["ok"]:
                failures.append(
                    f"{corpus.name}:{i}: different result\n  {line}\n"
                    f"  dstack: {json.dumps(t['ok'])}\n  ours:   {json.dumps(o['ok'])}"
                )
        else:
            rejected += 1
            if "err" not in o:
                failures.append(
                    f"{corpus.name}:{i}: dstack rejects ({t['err'][:200]}), we accept\n  {line}"
                )
    assert not failures, f"{len(failures)} of {len(lines)} differ:\n" + "\n".join(failures[:40])
    assert accepted > 0 and rejected > 0
