"""Write the helpdesk tickets as a user-style classification CSV (search_spaces/ticket_routing.yaml).

    python scripts/make_tickets_csv.py      # writes data/tickets/{train,test}.csv

A user's own file rarely looks like our bundled data: here the text column is `ticket_body`, the label column is
`queue_id`, a number (0-9, the queue table is written beside it as queues.csv), and there is no validation split.
Rows come from the bundled helpdesk set (sweeps/assets/helpdesk): the request a person wrote, its routing
category; its train and validation splits become train.csv, its test split (held-out situations) test.csv.
Deterministic, standard library only.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "sweeps" / "assets" / "helpdesk"


def rows(split: str) -> list[dict]:
    with open(SOURCE / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def request(record: dict) -> str:
    return next(m["content"] for m in record["messages"] if m["role"] == "user")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "tickets")
    args = ap.parse_args(argv)
    splits = {"train": rows("train") + rows("validation"), "test": rows("test")}
    queues = sorted({r["category"] for r in splits["train"]})
    args.out.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        with open(args.out / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["ticket_id", "ticket_body", "queue_id"])
            for r in records:
                w.writerow([r["id"], request(r), queues.index(r["category"])])
    with open(args.out / "queues.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["queue_id", "queue"], *[[i, q] for i, q in enumerate(queues)]])
    print(f"wrote {args.out}/train.csv ({len(splits['train'])} rows), test.csv ({len(splits['test'])} rows), "
          "queues.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
