"""Training-loop integrations: energy per step and per epoch, logged by the framework's own logger.

* `aipm_fast.integrations.lightning.AipmCallback`: a PyTorch Lightning callback
  (pip install 'aipm-fast[lightning]').
* `aipm_fast.integrations.huggingface.AipmTrainerCallback`: a Hugging Face `TrainerCallback`
  (pip install 'aipm-fast[huggingface]').

Each module imports its framework when it is imported itself, never from here, so that
`import aipm_fast` stays free of both. Both log the same keys (joules):

    energy/step_j, energy/step_j/<domain>     the latest step whose energy is known
    energy/epoch_j, energy/epoch_j/<domain>   the epoch just ended
    energy/epoch_j_per_sample                 where the number of samples is known
    energy/train_j, energy/train_j/<domain>   the whole training run, at its end

A step's energy is known only once the power readings pass its end (typically 0.1-1 s later),
so the step keys lag the training loop by a few steps. Totals (`energy/step_j`, ...) add the
GPUs and the CPU packages with their DRAM; parts that a package already holds (core, uncore)
are not added again, and the platform domain (psys) counts only where no package can be read.
"""
