"""Trainers: SFT, reward model, PPO (ours), GRPO/RLOO, DPO and online DPO.

Each module is a config dataclass plus ``main(cfg)``; ``rlaif train KIND --config RECIPE`` runs
them, and ``accelerate launch -m rlaif.train.KIND --config RECIPE`` runs them on many devices.
"""
