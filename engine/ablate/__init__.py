"""The cumulative ablation of the four PanGu-pi Pro formulas (`tinyforge ablate`): baseline, + compact
tokenizer, + deeper-narrower shape, + parameter inheritance, + a second round with hard-sample replay,
every arm at the same parameter count and the same training FLOPs, with an equal-bytes view beside it.

spec (the config and its scales), shapes (parameter-matched shapes), run (the arms), report (table,
JSON, bar chart)."""
