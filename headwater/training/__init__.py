"""Training routines: supervised fine-tuning (the organism's M0) and a built-in DPO trainer."""
from headwater.training.dpo import DPOConfig, DPOResult, DPOStepLog, dpo_loss, train_dpo
from headwater.training.sft import SFTConfig, SFTResult, train_sft

__all__ = [
    "DPOConfig", "DPOResult", "DPOStepLog", "dpo_loss", "train_dpo",
    "SFTConfig", "SFTResult", "train_sft",
]
