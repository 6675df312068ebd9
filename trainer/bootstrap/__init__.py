"""`flywheel bootstrap`: trains the small default base model from local Python sources.

No weights can be downloaded where Flywheel may run, so it trains its own: a byte-level BPE
tokenizer and a Llama-style model, on the standard library (plus any `--corpus` dirs), within a
wall-clock budget, half of the samples in fill-in-the-middle form with the middles biased toward the
rest of a line or a few lines, which is what inline completion asks for. The result is an ordinary
`transformers` model directory, evaluated on held-out files that it never saw.

    presets.py     the sizes: `tiny` for the tests, `small` the default model
    tokenizer.py   byte-level BPE with the flywheel special tokens
    model.py       the Llama it trains
    samples.py     left-to-right windows and fill-in-the-middle rewrites
    train.py       the loop and its schedule
    evaluate.py    held-out next-token accuracy and next-line match
    build.py       all of it into a model directory, written atomically; `flywheel bootstrap`
"""

from trainer.bootstrap.build import REPORT_FILE, build_base_model, main

__all__ = ["REPORT_FILE", "build_base_model", "main"]
