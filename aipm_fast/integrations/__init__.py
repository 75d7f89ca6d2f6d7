"""Integrations with training frameworks and monitoring: Lightning, Hugging Face, torch.distributed,
Prometheus. Each module imports its framework lazily, so that none is needed to use the others."""
