"""The bundled helpdesk set (sweeps/assets/helpdesk/*.jsonl) is data, edited as data: these are the house rules
its records keep (sweeps/assets/helpdesk/README.md), checked on the files themselves."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from sweeps.trial.data.reading import HELPDESK

SPLITS = {"train": 24, "validation": 6, "test": 6}  # records per category
REQUEST_WORDS, ANSWER_WORDS, STEPS = (12, 45), (50, 90), (2, 4)
SIGN_OFF = re.compile(r"^Routed to (.+)\. Reply to this ticket if anything is unclear\.$")


def _records() -> dict[str, list[dict]]:
    return {split: [json.loads(line) for line in (HELPDESK / f"{split}.jsonl").read_text(encoding="utf-8")
                    .splitlines() if line.strip()] for split in SPLITS}


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
    return _records()


def test_the_package_ships_the_files_where_the_data_loader_reads_them(records):
    assert (HELPDESK / "README.md").is_file()
    assert {split: len(rows) for split, rows in records.items()} == {"train": 240, "validation": 60, "test": 60}


def test_splits_are_stratified_and_ids_run_in_order(records):
    categories = {r["category"] for rows in records.values() for r in rows}
    assert len(categories) == 10
    for split, per_category in SPLITS.items():
        assert Counter(r["category"] for r in records[split]) == dict.fromkeys(categories, per_category), split
    ids = [r["id"] for split in SPLITS for r in records[split]]
    assert ids == [f"hd-{i:04d}" for i in range(1, 361)]


def test_every_answer_is_in_house_style(records):
    teams: dict[str, set[str]] = {}
    for rows in records.values():
        for r in rows:
            user, assistant = r["messages"]
            assert (user["role"], assistant["role"]) == ("user", "assistant"), r["id"]
            lines = assistant["content"].split("\n")
            assert lines[0] == f"Category: {r['category']}", r["id"]
            steps = lines[2:-1]
            assert STEPS[0] <= len(steps) <= STEPS[1], r["id"]
            assert [s.split(". ", 1)[0] for s in steps] == [str(i) for i in range(1, len(steps) + 1)], r["id"]
            sign_off = SIGN_OFF.match(lines[-1])
            assert sign_off, r["id"]
            teams.setdefault(r["category"], set()).add(sign_off.group(1))
            assert REQUEST_WORDS[0] <= len(user["content"].split()) <= REQUEST_WORDS[1], r["id"]
            assert ANSWER_WORDS[0] <= len(assistant["content"].split()) <= ANSWER_WORDS[1], r["id"]
    assert all(len(t) == 1 for t in teams.values()), teams  # one team per category, always in the same words


def test_no_request_appears_twice(records):
    requests = [r["messages"][0]["content"] for rows in records.values() for r in rows]
    assert len(requests) == len(set(requests))
