"""Integrations with training frameworks and monitoring: Lightning, Hugging Face, torch.distributed,
Prometheus. Each module imports its framework lazily, so that none is needed to use the others.

Training loops:

* `aipm_fast.integrations.lightning.AipmCallback`: a PyTorch Lightning callback
  (pip install 'aipm-fast[lightning]').
* `aipm_fast.integrations.huggingface.AipmTrainerCallback`: a Hugging Face `TrainerCallback`
  (pip install 'aipm-fast[huggingface]').

Both log through the framework's own loggers, under names every logger takes as they are
(`aipm_fast.integrations.keys`: no `:`, no key both a leaf and a prefix), in joules:

    energy/step/total_j, energy/step/<domain>_j      Lightning: each step, at its own step
    energy/steps/total_j, .../<domain>_j, .../count  Hugging Face: the steps resolved since the previous log
    energy/epoch/total_j, energy/epoch/<domain>_j    each epoch, in a record of its own
    energy/epoch/j_per_sample                        where the number of samples is known
    energy/train/total_j, energy/train/<domain>_j    the whole training run, at its end

Under torch.distributed, rank 0 also logs the job's figures (`energy/job_epoch/...`,
`energy/job_train/...`: total_j, j_per_step, j_per_sample, rank<r>_j).

A step's energy is known only once the power readings pass its end (typically 0.1-1 s later):
it is logged when known, never repeated, and nothing waits for it while training runs. Totals
(`total_j`) add the GPUs and the CPU packages with their DRAM; parts that a package already
holds (core, uncore) are not added again, and the platform domain (psys) counts only where no
package can be read.
"""
