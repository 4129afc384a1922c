"""Corpus cleaning: repair each document, drop low-quality ones, deduplicate, scrub PII, split.

The library behind `python -m stages.clean`, one module per concern; import a name from the
module that owns it (this package imports nothing, so importing one part never loads the rest):

  pii           emails, IP addresses and phone numbers replaced by placeholders; documentation
                addresses and numbers that only look like phones left alone
  code          which lines of a document are code, and whether the whole document is
  repairs       mojibake (ftfy), HTML to text, Unicode normalization, control characters,
                whitespace (code keeps its indentation), then pii: `repair(text, params)`
  filters       Gopher/C4 quality and Gopher repetition heuristics on prose, The Stack's on code
                documents: `quality_signals`, `first_failure`, the filter order
  dedup         exact keys, MinHash signatures, LSH band keys; corpus-wide exact and near
                duplicates on fixed-width arrays
  ground_truth  precision/recall of every filter and repair against the world's injected noise
  per_document  the per-document pass over chunks of documents, in worker processes
  parquet_io    the corpus opened and checked, read in batches, splits written in row groups
  splits        the kept documents split into train/validation by a hash of (seed, id)
  streaming     `clean_parquet` (the stage, streamed in three passes) and `clean_corpus`

Anchors: datatrove's GopherQualityFilter / GopherRepetitionFilter / C4QualityFilter, its MinHash
dedup (signatures and band keys on disk, buckets found by sorting) and dolma's taggers. We
reimplement the heuristics instead of calling datatrove because its English word splitting needs
spaCy and its exact dedup is a three-step on-disk pipeline; `bench/clean.py` runs both on the
same documents and compares their speed and keep/drop decisions.
"""
