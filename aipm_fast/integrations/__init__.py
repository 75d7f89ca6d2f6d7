"""Integrations with training frameworks and monitoring: Lightning, Hugging Face, torch.distributed,
Prometheus. Each module imports its framework lazily, so that none is needed to use the others.

Training loops:

* `aipm_fast.integrations.lightning.AipmCallback`: a PyTorch Lightning callback
  (pip install 'aipm-fast[lightning]').
* `aipm_fast.integrations.huggingface.AipmTrainerCallback`: a Hugging Face `TrainerCallback`
  (pip install 'aipm-fast[huggingface]').

Both log the same keys (joules) through the framework's own logger:

    energy/step_j, energy/step_j/<domain>     the latest step whose energy is known
    energy/epoch_j, energy/epoch_j/<domain>   the epoch just ended
    energy/epoch_j_per_sample                 where the number of samples is known
    energy/train_j, energy/train_j/<domain>   the whole training run, at its end

Under torch.distributed, every rank gathers each epoch's windows on rank 0 (a collective), which
logs the job's figures too:

    energy/job/epoch_j, energy/job/epoch_j_per_step, energy/job/epoch_j_per_sample
    energy/rank<r>/epoch_j
    energy/job/train_j, energy/job/train_j_per_step, energy/job/train_j_per_sample, energy/rank<r>/train_j

A step's energy is known only once the power readings pass its end (typically 0.1-1 s later),
so the step keys lag the training loop by a few steps. Totals (`energy/step_j`, ...) add the
GPUs and the CPU packages with their DRAM; parts that a package already holds (core, uncore)
are not added again, and the platform domain (psys) counts only where no package can be read.
"""
