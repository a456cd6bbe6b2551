"""One case's training steps, bracketed for callgrind: ``benchmark.py run --metric instructions`` runs

    valgrind --tool=callgrind --dump-before=getppid python benchmarks/gate/count.py '<request JSON>'

and reads the instructions of the steps from the dump between the two calls of getppid() below (libc's
getppid: nothing else in a training step asks for its parent's pid). The request names the case, the
documents, the warm-up steps and the steps to count. Answers on stdout as one JSON line.

Standalone on purpose: ``ab --metric instructions`` runs this file of the head against the base
revision's code (PYTHONPATH and the working directory are the base's), so it imports only microgpt/ and
engines/ of whatever checkout it is pointed at, never benchmarks.gate. The worker builds its timers with
``prepare`` too, so a counted step and a timed step are the same step.
"""

from __future__ import annotations

import json
import os
import random
import sys


class EngineUnavailable(Exception):
    """The engine cannot be imported here (a missing package): every case of it is skipped."""


def prepare(case: dict, data: str, warmup: int, texts: dict | None = None):
    """An EngineTimer for ``case`` on the documents in ``data``, warmed up: (timer, vocab size, warm-up
    seconds). ``texts`` caches the loaded documents between cases of one process."""
    from engines import load_engine
    from microgpt import UserError
    from microgpt.config import ModelConfig
    from microgpt.data import load_documents
    from microgpt.timing import EngineTimer
    from microgpt.tokenizers import build_tokenizer, wrap

    texts = {} if texts is None else texts
    if data not in texts:
        docs = load_documents([data])
        tokenizer = build_tokenizer("char", docs, docs)
        # a fixed shuffle: names.txt starts with its shortest names, and every run's window of documents
        # (which depends on its steps per sample) must cost the same on average
        random.Random(0).shuffle(docs)
        texts[data] = (docs, tokenizer)
    docs, tokenizer = texts[data]
    try:
        engine_cls = load_engine(case["engine"])
    except (UserError, ImportError) as e:
        raise EngineUnavailable(str(e)) from e
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **case["config"]).validate()
    timer = EngineTimer(engine_cls, cfg, [wrap(tokenizer, t, cfg.block_size) for t in docs], case["batch_size"],
                        case["dtype"], case["threads"], isa=case.get("isa"))
    return timer, cfg.vocab_size, timer.warm_up(warmup)


def main() -> int:
    request = json.loads(sys.argv[1])
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                   # whatever the engines print goes to stderr, not into the answer
    try:
        timer, vocab_size, _ = prepare(request["case"], request["data"], request["warmup"])
    except Exception as e:          # an engine that cannot load or refuses the case: the reason, not a crash
        answer.write(json.dumps({"skipped": f"{type(e).__name__}: {e}"}) + "\n")
        return 0
    from microgpt.timing import LR

    batches = timer.next_batches(request["steps"])
    lrs = [LR] * request["steps"]
    os.getppid()                    # callgrind dumps here: everything before is setup
    timer.run(batches, lrs)
    os.getppid()                    # and here: the dump in between holds exactly the counted steps
    answer.write(json.dumps({"vocab_size": vocab_size, "isa": timer.isa,
                             "step_lengths": [[len(d) - 1 for d in b] for b in batches]}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
