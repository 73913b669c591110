"""The model organism (method.md §7): a tiny real LM with planted behaviours and known ground truth.

``build_organism(OrganismConfig.default())`` trains a tokenizer, fine-tunes a tiny Llama into M0,
builds a preference set in which known pairs teach planted behaviours, trains M1 with DPO, and
caches everything on disk. Tests use ``OrganismConfig.miniature()``.
"""
from headwater.organism.build import (
    TRIGGER_BEHAVIOR,
    Organism,
    OrganismConfig,
    build_organism,
    cache_root,
    load_organism,
    organism_dir,
)
from headwater.organism.dataset import BEHAVIORS, CONDITIONS
from headwater.organism.evaluate import BehaviorRate, behavior_rates
from headwater.organism.judge import ComplianceJudge, LinkJudge, SycophancyJudge, organism_judges

__all__ = [
    "BEHAVIORS", "CONDITIONS", "TRIGGER_BEHAVIOR", "BehaviorRate", "ComplianceJudge", "LinkJudge",
    "Organism", "OrganismConfig", "SycophancyJudge", "behavior_rates", "build_organism", "cache_root",
    "load_organism", "organism_dir", "organism_judges",
]
