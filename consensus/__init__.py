"""consensus: volunteers' votes -> per-tile answers with calibrated confidence, retirement,
points -> structures, tiles + structures -> villages, and GeoJSON/CSV/GPKG exports.

Pure numpy / scipy / scikit-learn / shapely on plain arrays: no web, no database.
See ``docs/consensus.md`` for the API and ``docs/spatial-model.md`` for the spatial model.
"""

from .aggregate import (DEFAULT_METHOD, METHODS, Method, SkillModel, TileResult, aggregate,
                        dawid_skene, gold_seeded, majority_vote, one_coin, spatial)
from .errors import (ConsensusError, ExportError, MethodError, MissingDependencyError,
                     VotesError)
from .retirement import (FixedPolicy, ReplayReport, RetirementPolicy, replay,
                         tile_posterior)
from .votes import (MAPSWIPE_ANSWERS, RESPONSE_ONLY, Votes, read_truth_csv, read_votes_csv,
                    truth_array)

__all__ = [
    "DEFAULT_METHOD", "METHODS", "MAPSWIPE_ANSWERS", "RESPONSE_ONLY", "ConsensusError",
    "ExportError", "FixedPolicy", "Method", "MethodError", "MissingDependencyError",
    "ReplayReport", "RetirementPolicy", "SkillModel", "TileResult", "Votes", "VotesError",
    "aggregate", "dawid_skene", "gold_seeded", "majority_vote", "one_coin", "read_truth_csv",
    "read_votes_csv", "replay", "spatial", "tile_posterior", "truth_array",
]
