"""The tokenizer: loading one for training and evaluation, and the SentencePiece tooling for the
compact tokenizer (PanGu-pi Pro, first formula): train a large tokenizer, count its token frequencies,
compact it to the pieces a corpus uses (editing the model proto, never retraining), and report
coverage / tokens per byte / embedding share by size.

One job per module: load (the byte or SentencePiece tokenizer that training reads, and the bits-per-byte
table), corpus (streaming text), train, count, proto (model-proto helpers and the BPE merge trace),
compact, report, spec (the stage config), run (the stage runner)."""
