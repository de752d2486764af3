"""consensus: volunteers' votes -> per-tile answers with calibrated confidence, retirement,
points -> structures, tiles + structures -> villages, and GeoJSON/CSV/GPKG exports.

Pure numpy / scipy / scikit-learn / shapely on plain arrays: no web, no database.
See ``docs/consensus.md`` for the API and ``docs/spatial-model.md`` for the spatial model.
"""

from .aggregate import (DEFAULT_METHOD, METHODS, Method, SkillModel, TileResult, aggregate,
                        dawid_skene, gold_seeded, majority_vote, one_coin, spatial)
from .errors import (ConsensusError, ExportError, MethodError, MissingDependencyError,
                     VotesError)
from .export import (Layer, export_metadata, num, pseudonym, structure_layer, tile_layer,
                     to_geojson, village_layer, volunteer_rows, write_csv, write_geojson,
                     write_gpkg, write_rows_csv)
from .geo import LocalProjection, tile_bounds
from .points import Structures, cluster_points
from .retirement import (FixedPolicy, ReplayReport, RetirementPolicy, replay,
                         tile_posterior)
from .villages import Villages, group_villages
from .votes import (MAPSWIPE_ANSWERS, RESPONSE_ONLY, Votes, read_truth_csv, read_votes_csv,
                    truth_array)

__all__ = [
    "DEFAULT_METHOD", "METHODS", "MAPSWIPE_ANSWERS", "RESPONSE_ONLY", "ConsensusError",
    "ExportError", "FixedPolicy", "Method", "MethodError", "MissingDependencyError",
    "ReplayReport", "RetirementPolicy", "SkillModel", "TileResult", "Votes", "VotesError",
    "aggregate", "dawid_skene", "gold_seeded", "majority_vote", "one_coin", "read_truth_csv",
    "read_votes_csv", "replay", "spatial", "tile_posterior", "truth_array",
    "Layer", "export_metadata", "num", "pseudonym", "structure_layer", "tile_layer", "to_geojson",
    "village_layer", "volunteer_rows", "write_csv", "write_geojson", "write_gpkg",
    "write_rows_csv", "LocalProjection", "tile_bounds", "Structures", "cluster_points",
    "Villages", "group_villages",
]
