"""Trainers: SFT, reward model, PPO (ours), GRPO/RLOO, DPO and online DPO.

Each module is a config dataclass plus ``main(cfg)``; ``rlaif train KIND --config RECIPE`` runs
them, and ``accelerate launch -m rlaif.train.KIND --config RECIPE`` runs them on many devices.
"""

# ``python -m rlaif.train.KIND`` (torchrun, accelerate launch) bypasses the CLI: the same
# environment, before a trainer module imports transformers, datasets or huggingface_hub
from rlaif.models import no_usage_pings

no_usage_pings()
