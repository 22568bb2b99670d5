"""One rank of a run's fine-tune stage under torchrun (``[finetune] nproc`` > 1).

``prunelab run`` starts ``python -m torch.distributed.run --standalone --nproc_per_node N -m
prunelab.ddp_stage RUN_FOLDER`` and waits; every rank rebuilds the model, data and searched
widths from the run folder (``config.json``, ``search/model``) and runs
:func:`prunelab.pipeline.finetune_rank`; rank 0 alone writes ``finetuned/``, its checkpoint and
``finetune.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import PrunelabError


def main(argv: list[str] | None = None) -> int:
    from .pipeline import finetune_rank

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0], "config.json").is_file():
        print("error: give one prunelab run folder (it holds config.json)", file=sys.stderr)
        return 2
    try:
        finetune_rank(Path(args[0]))
    except PrunelabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
