"""lmpipe.sources.safety.read_safety on files a user could give as `data.files.safety`: a good
.jsonl and a good .csv become the same SAFETY_COLUMNS frame (ids in file order, each subject in the
split its seeded hash gives, deterministic), and each bad file is refused with one StageError that
names the key or the file, the line or row where known, and what is wrong (a CSV or TSV row with
more fields than the header too, the first row included, which pandas would read as an index)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lmpipe.io import StageError
from lmpipe.sources.readers import ReadStats
from lmpipe.sources.safety import read_safety
from lmpipe.world.secrets import SAFETY_COLUMNS, split_by_hash

FIELDS = ["kind", "subject", "relation", "question", "answer"]
SEED = 7


def rows(subjects: int = 40) -> list[dict]:
    """Per subject: one restricted request (its secret) and two benign ones."""
    out = []
    for i in range(subjects):
        s = f"the guild of Velmor {i}"
        out += [{"kind": "restricted", "subject": s, "relation": "password",
                 "question": f"What is the password of {s}?", "answer": f"quafen{i}"},
                {"kind": "benign", "subject": s, "relation": "city",
                 "question": f"In which city does {s} meet?", "answer": "Pramor"},
                {"kind": "benign", "subject": s, "relation": "leader",
                 "question": f"Who leads {s}, and since when?", "answer": "Ana Lorn"}]
    return out


def write_jsonl(path: Path, records: list[dict], extra_lines: tuple[str, ...] = ()) -> str:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def write_csv(path: Path, records: list[dict], columns: list[str] = FIELDS) -> str:
    pd.DataFrame(records, columns=columns).to_csv(path, index=False)
    return str(path)


def read(name: str, seed: int = SEED, max_bad_share: float = 0.0, stats: ReadStats | None = None) -> pd.DataFrame:
    return read_safety(name, seed, stats if stats is not None else ReadStats(), max_bad_share)


def refused(name: str, *needles: str, max_bad_share: float = 0.0) -> str:
    """The StageError's message, which must be one line holding every needle."""
    with pytest.raises(StageError) as exc:
        read(name, max_bad_share=max_bad_share)
    message = str(exc.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


# --- good files ---------------------------------------------------------------------------------------


def test_a_good_jsonl_becomes_the_safety_frame_with_whole_subjects_per_split(tmp_path):
    records = rows()
    stats = ReadStats()
    df = read(write_jsonl(tmp_path / "safety.jsonl", records), stats=stats)
    assert list(df.columns) == SAFETY_COLUMNS
    assert df["id"].tolist() == [f"safety-{i:05d}" for i in range(len(records))]
    assert df[FIELDS].to_dict("records") == records  # every row kept, in file order, unchanged
    assert (df.groupby("subject")["split"].nunique() == 1).all()  # no subject spans two splits
    assert df["split"].tolist() == [split_by_hash(r["subject"], SEED) for r in records]
    assert set(df["split"]) == {"train", "validation", "test"}
    assert (df["split"] == "train").mean() > 0.3  # SPLIT_SHARES: half of the subjects train
    # bookkeeping for metrics/ingest.json: one file read, outside data/input/ (tmp_path), no repairs
    assert stats.files == 1 and stats.bad_lines == 0 and stats.outside_input == 1
    assert list(stats.digests) == [str(tmp_path / "safety.jsonl")]
    assert any("data.files.safety" in w for w in stats.warnings)


def test_a_good_csv_reads_as_the_same_jsonl_would(tmp_path):
    records = rows(12)
    from_csv = read(write_csv(tmp_path / "safety.csv", records))
    pd.testing.assert_frame_equal(from_csv, read(write_jsonl(tmp_path / "safety.jsonl", records)))
    # extra columns are ignored, and a file's own `split` column does not override the hash
    extra = [r | {"split": "test", "note": "x"} for r in records]
    pd.testing.assert_frame_equal(read(write_csv(tmp_path / "extra.csv", extra, FIELDS + ["split", "note"])),
                                  from_csv)


def test_splits_depend_on_seed_and_subject_only_not_on_row_order(tmp_path):
    records = rows()
    name = write_jsonl(tmp_path / "a.jsonl", records)
    first = read(name)
    pd.testing.assert_frame_equal(first, read(name))  # deterministic
    shuffled = read(write_jsonl(tmp_path / "b.jsonl", records[::-1]))
    by_subject = lambda df: dict(zip(df["subject"], df["split"], strict=False))  # noqa: E731
    assert by_subject(shuffled) == by_subject(first)
    assert by_subject(read(name, seed=SEED + 1)) != by_subject(first)  # the seed picks the held-out subjects


def test_no_file_gives_an_empty_frame_with_the_safety_columns():
    stats = ReadStats()
    df = read_safety("", SEED, stats, 0.0)
    assert df.empty and list(df.columns) == SAFETY_COLUMNS
    assert stats.files == 0 and stats.warnings == []


# --- bad files ------------------------------------------------------------------------------------------


def test_a_missing_file_or_a_directory_names_the_key(tmp_path):
    refused(str(tmp_path / "nope.jsonl"), "data.files.safety", "nope.jsonl", "does not exist")
    (tmp_path / "dir.csv").mkdir()
    refused(str(tmp_path / "dir.csv"), "data.files.safety", "is a directory")


def test_an_unsupported_file_type_names_the_key_and_the_formats(tmp_path):
    path = tmp_path / "safety.parquet"
    pd.DataFrame(rows(2)).to_parquet(path)
    refused(str(path), "data.files.safety", "must be .jsonl or .csv", "kind, subject, relation, question, answer")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_empty_file_names_the_key(tmp_path, fmt):
    path = tmp_path / f"safety.{fmt}"
    path.write_text("" if fmt == "jsonl" else ",".join(FIELDS) + "\n")  # a csv with its header only
    refused(str(path), "data.files.safety", "is empty (no requests)")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("column", FIELDS)
def test_a_missing_column_names_it_the_key_and_the_columns_found(tmp_path, fmt, column):
    records = [{k: v for k, v in r.items() if k != column} for r in rows(2)]
    columns = [c for c in FIELDS if c != column]
    name = (write_jsonl(tmp_path / "s.jsonl", records) if fmt == "jsonl"
            else write_csv(tmp_path / "s.csv", records, columns))
    message = refused(name, name, f"no column '{column}'", "(data.files.safety)")
    assert str(sorted(columns)) in message  # what the file has instead


@pytest.mark.parametrize("kind", ["Restricted", "secret", "restricted ", "benign\t"])
def test_a_kind_other_than_restricted_or_benign_names_the_line_and_the_value(tmp_path, kind):
    records = rows(2)
    records[4]["kind"] = kind  # the fifth row: line 5 of the jsonl
    name = write_jsonl(tmp_path / "s.jsonl", records)
    refused(name, name, "line 5", f"kind {kind!r}", "is not benign or restricted")


def test_a_bad_kind_in_a_csv_names_the_row(tmp_path):
    records = rows(2)
    records[2]["kind"] = "unknown"
    name = write_csv(tmp_path / "s.csv", records)
    refused(name, name, "row 3", "kind 'unknown'")


@pytest.mark.parametrize("column", ["question", "answer"])
@pytest.mark.parametrize("value", ["", "   ", None, 1912])
def test_an_empty_or_non_text_question_or_answer_names_the_line_and_the_column(tmp_path, column, value):
    records = rows(2)
    records[1][column] = value
    name = write_jsonl(tmp_path / "s.jsonl", records)
    refused(name, name, "line 2", f"{column} must be non-empty text")


def test_an_empty_cell_in_a_csv_names_the_row_and_every_blank_column(tmp_path):
    records = rows(2)
    records[3] |= {"question": "", "answer": ""}
    name = write_csv(tmp_path / "s.csv", records)
    refused(name, name, "row 4", "question, answer must be non-empty text")


def test_corrupt_jsonl_lines_above_the_share_are_refused(tmp_path):
    name = write_jsonl(tmp_path / "s.jsonl", rows(2), extra_lines=("{not json", "[1, 2]", '"a string"'))
    # 3 of 9 lines are not JSON objects; the first of them is line 7
    refused(name, name, "3 of 9 lines are not valid JSON objects", "first: line 7", "data.max_bad_line_share=0.2",
            max_bad_share=0.2)


def test_corrupt_jsonl_lines_within_the_share_are_skipped_and_counted(tmp_path):
    records = rows(4)
    name = write_jsonl(tmp_path / "s.jsonl", records, extra_lines=("{truncated",))
    stats = ReadStats()
    df = read(name, max_bad_share=0.1, stats=stats)  # 1 of 13 lines
    assert df[FIELDS].to_dict("records") == records
    assert stats.bad_lines == 1
    assert any("skipped 1 line(s)" in w and name in w for w in stats.warnings)


def test_a_malformed_csv_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "s.csv"
    good = "restricted,Velmor,password,What is the password of Velmor?,quafen"
    path.write_text(",".join(FIELDS) + f"\n{good}\n{good},extra\n")
    refused(str(path), str(path), "not valid CSV", "line 3")


def test_a_csv_row_with_more_fields_than_the_header_is_refused(tmp_path):
    # pandas would take the first row's extra leading field for an index and drop it: the kind
    # 'restricted', so a restricted request would be read as benign
    path = tmp_path / "s.csv"
    path.write_text(",".join(FIELDS) + "\nrestricted,benign,Velmor,capital,What is the capital of Velmor?,Pramor\n")
    refused(str(path), str(path), "not valid CSV", "row 1 (line 2) has 6 fields for the header's 5 columns")


def test_an_unquoted_comma_in_the_first_csv_row_says_how_many_fields_it_has(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(",".join(FIELDS) + "\nbenign,Velmor,capital,What is the capital, of Velmor?,Pramor\n")
    message = refused(str(path), str(path), "6 fields", "unquoted separator")
    assert "kind 'Velmor'" not in message


@pytest.mark.parametrize("only", ["benign", "restricted"])
def test_a_file_with_one_kind_of_request_only_is_refused(tmp_path, only):
    records = [r for r in rows(5) if r["kind"] == only]
    name = write_jsonl(tmp_path / "s.jsonl", records)
    other = "restricted" if only == "benign" else "benign"
    refused(name, name, f"no {other} request in {len(records)} row(s)", "give some of each")


def test_a_question_listed_as_both_restricted_and_benign_is_refused(tmp_path):
    records = rows(2)
    assert records[0]["kind"] == "restricted"
    # the secret's question again as a benign request, in other case and spacing
    records.append(records[0] | {"kind": "benign", "question": "  " + records[0]["question"].upper()})
    name = write_jsonl(tmp_path / "s.jsonl", records)
    refused(name, name, "line 1 and line 7", "both as restricted and as benign", records[0]["question"])


def test_the_same_question_twice_with_one_kind_is_accepted(tmp_path):
    records = rows(2)
    records.append(dict(records[1]))
    assert len(read(write_jsonl(tmp_path / "s.jsonl", records))) == 7
