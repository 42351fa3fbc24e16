"""Configuration: nested dataclasses, presets, YAML files and ``key=value`` overrides.

The resolved config is saved as JSON in every checkpoint and as YAML in every run folder, so a
model always says how it was built. Three modules, each importing only those before it:
``schema`` (the dataclasses, special ids, ``AiaynError``), ``bounds`` (what a config may hold:
``validate``) and ``load`` (presets, recipes, files, overrides). Everything is importable from
here, so the rest of aiayn writes ``from aiayn.config import ...`` without knowing the split.

    cfg = load_config("small", path="my.yaml", overrides=["d_model=128", "train.max_minutes=20"])
"""

from aiayn.config.bounds import ENUMS, MAX_PARAMETERS, MAXIMA, parameter_count, validate
from aiayn.config.load import (
    apply,
    apply_override,
    apply_recipe,
    from_dict,
    load_config,
    parse_override,
    preset,
    resolve_key,
)
from aiayn.config.schema import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SECTIONS,
    TUNE_ALPHAS,
    TUNE_BEAMS,
    TUNE_PENALTIES,
    TUNE_SENTENCES,
    UNK_ID,
    AiaynError,
    Config,
    DataConfig,
    DecodeConfig,
    ModelConfig,
    TrainConfig,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "SECTIONS",
    "TUNE_ALPHAS",
    "TUNE_BEAMS",
    "TUNE_PENALTIES",
    "TUNE_SENTENCES",
    "AiaynError",
    "Config",
    "DataConfig",
    "DecodeConfig",
    "ModelConfig",
    "TrainConfig",
    "ENUMS",
    "MAXIMA",
    "MAX_PARAMETERS",
    "parameter_count",
    "validate",
    "apply",
    "apply_override",
    "apply_recipe",
    "from_dict",
    "load_config",
    "parse_override",
    "preset",
    "resolve_key",
]
