"""tinyforge engine: model, data, training, tokenizer compaction, inheritance, export."""
