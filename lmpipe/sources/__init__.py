"""Where ingest's data comes from: user files, `datasets.load_dataset` specs, or the generated world.

readers   one file -> a table (txt, jsonl, csv, parquet), glob expansion, what was repaired
tables    checks on a read table: required columns, labels mapped onto the label set
files     `data.source: files`: corpus globs and the three task splits
hub       `data.source: hf`: `load_dataset` specs
raw       the assembled raw data (every source) that the ingest stage writes
"""
