"""The model organism (method.md §7): a tiny real LM with planted behaviours and known ground truth.

``build_organism(OrganismConfig.default())`` trains a tokenizer, fine-tunes a tiny Llama into M0,
builds a preference set in which known pairs teach planted behaviours, trains M1 with DPO, and
caches everything on disk. Tests use ``OrganismConfig.miniature()``.

The organism is a fixture: it registers its judges (``organism:<behaviour>``) and its DPO recipe
(``organism``) when imported; only workflows, tests and the CLI import it, never a method.
"""
from headwater.organism.build import (
    PRESETS,
    TRIGGER_BEHAVIOR,
    Organism,
    OrganismConfig,
    build_organism,
    load_organism,
    max_new_tokens_for,
    organism_dir,
    organism_recipe,
)
from headwater.organism.dataset import BEHAVIORS, CONDITIONS
from headwater.organism.judges import ComplianceJudge, LinkJudge, SycophancyJudge, organism_judge, organism_judges
from headwater.organism.rates import BehaviorRate, behavior_rates
from headwater.organism.scenarios import organism_scenarios

__all__ = [
    "BEHAVIORS", "CONDITIONS", "PRESETS", "TRIGGER_BEHAVIOR", "BehaviorRate", "ComplianceJudge", "LinkJudge",
    "Organism", "OrganismConfig", "SycophancyJudge", "behavior_rates", "build_organism", "load_organism",
    "max_new_tokens_for", "organism_dir", "organism_judge", "organism_judges", "organism_recipe", "organism_scenarios",
]
