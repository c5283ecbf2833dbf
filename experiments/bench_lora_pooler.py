"""LoRA with BERT's pooler trained beside the adapter (model.lora.train_pooler=true, the default) vs
frozen (false, PEFT's own default for SEQ_CLS: only `classifier` is trained), same everything else.

BERT-style classifiers read [CLS] through the pooler (dense + tanh) before the classifier. A full
fine-tune trains it; PEFT's LoRA kept it frozen, so the new head sat on a fixed projection. On
all-MiniLM-L6-v2 that projection was never trained for anything (sentence-transformers pools by mean),
its weights have std 0.009, and LoRA only learned at learning rates near divergence.

Each side runs medsweep's trial function in this process (no Ray), on lr_lora's search data (500
training abstracts, 200 validation, 3 epochs, 128 tokens, query,value r 8), once per seed, sides
alternating. Prints every run's best and final validation macro-F1 and seconds, the medians, and last
`ratio=X.XX`: median best validation macro-F1, trained pooler over frozen pooler.

    python experiments/bench_lora_pooler.py                      # 2 seeds x 2 sides, ~8 min on 2 cores
    python experiments/bench_lora_pooler.py --learning-rate 2e-3 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsweep.run import compose
from medsweep.training.trial import run_trial


def one_run(train_pooler: bool, seed: int, args) -> tuple[float, float, float]:
    overrides = ["+sweep=lr_lora", f"trainer.learning_rate={args.learning_rate}", f"trainer.seed={seed}",
                 "model.lora.target_modules='query,value'", "model.lora.r=8",
                 f"model.lora.train_pooler={str(train_pooler).lower()}", f"data.max_train_samples={args.samples}",
                 "cluster.cpus_per_trial=2"]
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.time()
        result = run_trial(compose(overrides, run_dir))
    return result["best"]["val_f1_macro"], result["history"][-1]["val_f1_macro"], time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="lr_lora's base learning rate")
    parser.add_argument("--samples", type=int, default=500, help="training abstracts (lr_lora searches on 500)")
    args = parser.parse_args()
    best = {True: [], False: []}
    for index, seed in enumerate(args.seeds):
        for train_pooler in ((True, False) if index % 2 == 0 else (False, True)):  # alternate: drift hits both
            top, last, seconds = one_run(train_pooler, seed, args)
            best[train_pooler].append(top)
            print(f"seed {seed}  pooler {'trained' if train_pooler else 'frozen ':7s}  best val macro-F1 {top:.3f}  "
                  f"final {last:.3f}  {seconds:.0f} s", flush=True)
    for side in (True, False):
        values = best[side]
        print(f"pooler {'trained' if side else 'frozen'}: median best val macro-F1 {statistics.median(values):.3f} "
              f"(range {min(values):.3f}-{max(values):.3f}, n={len(values)}), lr {args.learning_rate:g}")
    print(f"ratio={statistics.median(best[True]) / statistics.median(best[False]):.2f}")


if __name__ == "__main__":
    main()
